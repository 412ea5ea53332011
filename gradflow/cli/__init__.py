"""The ``gradflow`` command line: a thin shell over the library, one module per command.

``app.py`` builds the typer app from the command modules; ``_common.py`` holds what they share (consoles,
``fail``, option types, output-path checks, loading a subject). Exit codes: 0 success, 1 a gate failed,
2 bad input (nothing is written then).
"""

from __future__ import annotations


def main() -> None:
    """Console-script entry point (``gradflow``, ``python -m gradflow``)."""
    from .app import app

    app()
