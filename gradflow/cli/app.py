"""The typer app: one command per module of :mod:`gradflow.cli`."""

from __future__ import annotations

import typer

from . import check, compare, learn, listing, report, sweep

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="gradflow: does a new branch starve another module of gradient? Measure retention = "
    "‖∇target‖ with the branch / without it.",
)
app.command("compare")(compare.command)
app.command("sweep")(sweep.command)
app.command("list")(listing.command)
app.command("learn")(learn.command)
app.command("report")(report.command)
app.command("check")(check.command)
