"""Stage runners: one module per DVC stage that joins the library to MLflow (train, evaluate, register)."""
