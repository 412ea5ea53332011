"""CLI commands that live outside cli.py, one module each (``command`` is the typer function)."""
