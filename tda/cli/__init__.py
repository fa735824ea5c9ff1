"""The ``tda`` command line (typer). Commands live in one module per topic; see ``main.py``."""
