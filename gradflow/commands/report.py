"""`gradflow report RUN.json [--baseline OLD.json] [--html out.html] [--markdown]`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def command(
    run: Annotated[Path, typer.Argument(help="Run record (JSON) to render.")],
) -> None:
    """Render a run record (terminal table, markdown, HTML) or a regression report against a baseline."""
    raise typer.Exit(2)
