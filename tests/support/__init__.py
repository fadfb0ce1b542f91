"""What tests share besides fixtures (tests/conftest.py holds those): cohorts, projects, services."""
