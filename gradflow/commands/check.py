"""`gradflow check [SPEC...] [--junit out.xml] [--out run.json]`: the CI gate."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def command(
    specs: Annotated[list[Path] | None, typer.Argument(help="Probe specs (probes/*.toml).")] = None,
) -> None:
    """Evaluate probe specs; exit 0 pass, 1 a threshold or regression failed, 2 bad input."""
    raise typer.Exit(2)
