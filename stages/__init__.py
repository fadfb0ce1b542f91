"""DVC stage entry points: one thin module per stage, run as `python -m stages.<name>`."""
