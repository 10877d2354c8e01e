"""Project tests: pytester is declared here, where pytest accepts ``pytest_plugins``."""

pytest_plugins = ["pytester"]
