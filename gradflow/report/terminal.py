"""Terminal rendering of run records with rich."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text

from ..gate import Band, GateMode, verdict
from ..record import RunRecord
from .format import fmt_ci, fmt_norm, fmt_ratio

VERDICT_STYLE = {
    "ok": "bold green", "starved": "bold red", "flooded": "bold magenta", "uncertain": "yellow",
    "no effect": "dim", "no grad": "red", "undefined": "red", "non-finite": "red",
}


def retention_table(
    record: RunRecord, band: Band | None = None, mode: GateMode = "ci", modules: bool = True
) -> Table:
    """The retention table: one row per (branch, target) total, then its per-module rows (indented)."""
    band = band or Band()
    subject = record.data["subject"]
    title = f"gradflow {record.kind} — subject {subject['name']}"
    if subject.get("preset"):
        title += f" ({subject['preset']})"
    ci_pct = int(round(record.data.get("confidence", 0.95) * 100))
    table = Table(title=title, caption=f"band {band.describe()}, verdict on the {mode} estimate; "
                  f"{record.data['batches']['count']} batches, seed {record.data['seed']}")
    table.add_column("branch")
    if record.kind == "sweep":
        table.add_column("scale", justify="right")
    table.add_column("target")
    table.add_column("module")
    table.add_column("norm with", justify="right")
    table.add_column("norm without", justify="right")
    table.add_column("retention", justify="right")
    table.add_column(f"{ci_pct}% CI", justify="right")
    table.add_column("verdict")
    for row in record.rows:
        if row["module"] != "*" and not modules:
            continue
        label = verdict(row, band, mode)
        # Text() keeps names literal: a module called "[red]x" must not be read as rich markup.
        cells = [Text(row["branch"])]
        if record.kind == "sweep":
            cells.append(f"{row['scale']:g}")
        total = row["module"] == "*"
        cells += [
            Text(row["target"]),
            Text("(all)" if total else "  " + row["module"]),
            fmt_norm(row["norm_with"]),
            fmt_norm(row["norm_without"]),
            fmt_ratio(row["retention"]),
            fmt_ci(row),
            Text(label, style=VERDICT_STYLE.get(label, "")),
        ]
        table.add_row(*cells, style="bold" if total else None)
    return table
