"""Rendering of ``gradflow check`` results: the retention table and the table of checks of one spec."""

from __future__ import annotations

from typing import Any

from rich.table import Table

from ..verdicts import describe_mode
from .format import text
from .plain import render_plain
from .terminal import notes_text, retention_table


def spec_renderables(result: Any) -> list[Any]:
    """Rich renderables of a :class:`gradflow.evaluation.SpecResult`: what ``gradflow check`` prints."""
    out: list[Any] = []
    spec = result.spec
    title = f"spec {result.path}" + (f" — {spec.description}" if spec and spec.description else "")
    out.append(text(title, style="bold"))
    if result.error is not None:
        out.append(text("error: " + result.error, style="red"))
        return out
    if result.record is not None and spec is not None:
        out.append(retention_table(result.record, spec.band, result.mode))
        out.extend(notes_text(result.record))
    table = Table(title="checks", caption=describe_mode(result.mode, spec.confidence if spec else 0.95))
    for column in ("kind", "check", "result", "detail"):
        table.add_column(column, overflow="fold")
    for check in result.checks:
        verdict = text("PASS", style="bold green") if check.passed else text("FAIL", style="bold red")
        label = f"{check.verdict}: " if check.verdict and check.kind != "preflight" else ""
        table.add_row(check.kind, text(check.name), verdict, text(label + check.detail))
    out.append(table)
    out.append(text(result.summary(), style="bold green" if result.passed else "bold red"))
    return out


def spec_text(result: Any, width: int = 140) -> str:
    """The rendered tables of a spec result as plain text (assertion messages, JUnit XML)."""
    return render_plain(spec_renderables(result), width)
