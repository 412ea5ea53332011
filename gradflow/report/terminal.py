"""Terminal rendering of run records with rich."""

from __future__ import annotations

import math
from typing import Any

from rich.console import Group, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from ..record import RunRecord
from ..verdicts import Band, GateMode, Verdict, verdict
from .format import (
    batches_text,
    ci_label,
    fmt_ci,
    fmt_ci_pair,
    fmt_delta,
    fmt_norm,
    fmt_ratio,
    fmt_scale,
    measurement_notes,
    module_label,
    text,
    uncertain_hint,
    visible,
)
from .regression import compatibility_warnings, config_changes, count_verdicts, regression_rows, rule_text, why
from .sweep import suggest_scale

VERDICT_STYLE = {
    "ok": "bold green", "starved": "bold red", "flooded": "bold magenta", "uncertain": "yellow",
    "no effect": "dim", "no grad": "red", "not run": "red", "undefined": "red", "non-finite": "red",
}


def retention_table(
    record: RunRecord, band: Band | None = None, mode: str | GateMode = GateMode.CI, modules: bool = True
) -> Table:
    """The retention table: one row per (branch, target) total, then its per-module rows (indented)."""
    band = band or Band()
    subject = record.data["subject"]
    title = f"gradflow {record.kind} — subject {subject['name']}"
    if subject.get("preset"):
        title += f" ({subject['preset']})"
    caption = (f"band {band.describe()}, verdict on the {mode} estimate; {batches_text(record)}, "
               f"seed {record.data['seed']}")
    if any(verdict(r, band, mode) is Verdict.UNCERTAIN for r in record.rows):
        caption += "\n" + uncertain_hint(record)
    table = Table(title=text(title), caption=Text(caption))  # the caption holds only gradflow's own words
    table.add_column("branch")
    if record.kind == "sweep":
        table.add_column("scale", justify="right")
    table.add_column("target", overflow="fold")
    table.add_column("module", overflow="fold")
    table.add_column("norm with", justify="right")
    table.add_column("norm without", justify="right")
    table.add_column("retention", justify="right")
    table.add_column(ci_label(record), justify="right")
    table.add_column("verdict")
    for row in record.rows:
        if row["module"] != "*" and not modules:
            continue
        label = verdict(row, band, mode).value
        # Text() keeps names literal: a module called "[red]x" must not be read as rich markup.
        cells = [text(row["branch"])]
        if record.kind == "sweep":
            cells.append(f"{row['scale']:g}")
        total = row["module"] == "*"
        cells += [
            text(row["target"]),
            text("(all)" if total else "  " + row["module"]),
            fmt_norm(row["norm_with"]),
            fmt_norm(row["norm_without"]),
            fmt_ratio(row["retention"]),
            fmt_ci(row),
            text(label, style=VERDICT_STYLE.get(label, "")),
        ]
        table.add_row(*cells, style="bold" if total else None)
    return table


REGRESSION_STYLE = {"improved": "bold green", "regressed": "bold red", "unchanged": "dim", "added": "cyan",
                    "removed": "cyan"}
BAR_WIDTH = 24


def _bar(value: float | None, band: Band, axis_max: float, style: str) -> Text:
    """A bar of ``value`` on [0, axis_max] with '│' marking the band's lower (and '┊' its upper) bound."""
    marks = {}
    for bound, char in ((band.min_retention, "│"), (band.max_retention, "┊")):
        if bound is not None and 0 < bound <= axis_max:
            marks[min(BAR_WIDTH - 1, int(round(bound / axis_max * BAR_WIDTH)))] = char
    filled = 0 if value is None or not math.isfinite(value) else int(round(max(0.0, value) / axis_max * BAR_WIDTH))
    cells = [marks.get(i, "█" if i < filled else "·") for i in range(BAR_WIDTH)]
    cells.append("▸" if filled > BAR_WIDTH else " ")
    line = "".join(cells)
    cut = min(filled, BAR_WIDTH)
    return Text.assemble((line[:cut], style), (line[cut:], "dim"))


def _axis_max(values: list[float | None], band: Band) -> float:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    top = max([1.0, *(b for b in (band.min_retention, band.max_retention) if b is not None), *finite])
    return min(top * 1.05, 2.0)


def _columns(header: list[str], right: set[int], rows: list[list[Text | str]]) -> list[Text]:
    """Rows of cells laid out as aligned lines (much faster than a rich Table for hundreds of rows)."""
    cells = [[c if isinstance(c, Text) else text(c) for c in row] for row in rows]
    widths = [max([len(header[i]), *(r[i].cell_len for r in cells if len(r) > i)]) for i in range(len(header))]
    lines = [text("  ".join(h.rjust(w) if i in right else h.ljust(w) for i, (h, w) in enumerate(zip(header, widths,
                                                                                                    strict=True))),
                  style="bold")]
    for row in cells:
        line = Text()
        for i, cell in enumerate(row):
            pad = " " * (widths[i] - cell.cell_len)
            if i:
                line.append("  ")
            if i in right:
                line.append(pad)
            line.append_text(cell)
            if i not in right and i < len(row) - 1:
                line.append(pad)
        lines.append(line)
    return lines


def bar_view(record: RunRecord, band: Band | None = None, mode: str | GateMode = GateMode.CI) -> Group:
    """The per-module breakdown with a compact bar per layer (compare), or the retention of each whole
    target per scale (sweep), grouped by (branch, target). '│' marks the band's lower bound, '┊' its upper
    bound; bars beyond the axis (at most 2.0) end in '▸'."""
    band = band or Band()
    sweep = record.kind == "sweep"
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in record.rows:
        if (r["module"] == "*") == sweep:
            groups.setdefault((r["branch"], r["target"]), []).append(r)
    axis_max = _axis_max([r["retention"] for rows in groups.values() for r in rows], band)
    header = ["scale" if sweep else "module", *([] if sweep else ["norm with", "norm without"]), "retention",
              ci_label(record), "bar", "verdict"]
    right = {1, 2} if sweep else {1, 2, 3, 4}
    rows: list[list[Text | str]] = []
    for (branch, target), group_rows in groups.items():
        if rows:
            rows.append([""])
        rows.append([text(f"{branch} → {target}", style="bold")])
        for row in group_rows:
            label = verdict(row, band, mode).value
            style = VERDICT_STYLE.get(label, "")
            norms = [] if sweep else [fmt_norm(row["norm_with"]), fmt_norm(row["norm_without"])]
            rows.append([text("  " + (fmt_scale(row["scale"]) if sweep else row["module"])), *norms,
                         fmt_ratio(row["retention"]), fmt_ci(row), _bar(row["retention"], band, axis_max, style),
                         text(label, style=style)])
    caption = f"bar axis 0 to {axis_max:.2f}; band {band.describe()}: │ lower bound" + (
        "" if band.max_retention is None else ", ┊ upper bound")
    title = text("retention per scale" if sweep else "per-module breakdown", style="bold italic")
    return Group(title, *_columns(header, right, rows), text(caption, style="dim"))


def suggestion_text(suggestion: dict[str, Any]) -> Text:
    """The sweep's suggested scale as one line."""
    style = "bold green" if suggestion["scale"] is not None else "bold red"
    return text("suggestion: ", style="bold") + text(suggestion["message"], style=style)


def metadata_text(record: RunRecord) -> Text:
    """One dim line: preset, seed, batches, versions, when."""
    env = record.data.get("environment", {})
    run = record.data.get("run", {})
    parts = [f"seed {record.data['seed']}",
             f"{record.data['learning']['steps']} steps" if record.kind == "learn" else batches_text(record)]
    parts += [f"{k} {env[k]}" for k in ("gradflow", "torch") if env.get(k)]
    if run.get("created"):
        parts.append(str(run["created"]))
    return text(" · ".join(parts), style="dim")


def notes_text(record: RunRecord) -> list[Text]:
    """How the record was measured (dim) and its warnings (yellow), one line each."""
    notes, warnings = measurement_notes(record)
    return [text("note: " + n, style="dim") for n in notes] + [text("warning: " + w, style="bold yellow")
                                                              for w in warnings]


def render_record(record: RunRecord, band: Band | None = None, mode: str | GateMode = GateMode.CI,
                  modules: bool = True) -> RenderableType:
    """Everything the terminal shows for one record: the branch x target table, then (compare) the
    per-module breakdown with bars, or (sweep) the table and the retention per scale with the suggestion."""
    band = band or Band()
    if record.kind == "learn":
        from .learning import render_learning

        return Group(render_learning(record), metadata_text(record), *notes_text(record))
    sweep = record.kind == "sweep"
    parts: list[RenderableType] = [retention_table(record, band, mode, modules and sweep), metadata_text(record),
                                   *notes_text(record)]
    if modules or sweep:
        parts += [text(""), bar_view(record, band, mode)]
    if record.kind == "sweep":
        parts += [text(""), suggestion_text(suggest_scale(record, band, mode=mode))]
    return Group(*parts)


def warnings_panel(warnings: list[str]) -> Panel:
    """The mismatch warnings of a regression report, impossible to miss."""
    body = Text()
    for i, warning in enumerate(warnings):
        body.append(("\n" if i else "") + "• " + visible(warning))
    return Panel(body, title="WARNING: records may not be comparable", border_style="bold red", expand=False)


def regression_table(rows: list[dict[str, Any]], band: Band, modules: bool = True,
                     title: str = "regression report") -> Table:
    """Baseline vs new, one row per (branch, target, module[, scale]), with delta and verdict."""
    rows = [r for r in rows if modules or r["module"] == "*"]
    sweep = any(r["scale"] is not None for r in rows)
    counts = count_verdicts(rows)
    table = Table(title=text(title), caption=f"band {band.describe()}; "
                  + ", ".join(f"{n} {v}" for v, n in counts.items() if n))
    for column in ("branch", *(["scale"] if sweep else []), "target", "module"):
        table.add_column(column, justify="right" if column == "scale" else "left", overflow="fold")
    for column in ("baseline", "new", "delta"):
        table.add_column(column, justify="right")
    table.add_column("baseline CI", justify="right")
    table.add_column("new CI", justify="right")
    table.add_column("verdict")
    table.add_column("why")
    for row in rows:
        cells: list[Any] = [text(row["branch"])]
        if sweep:
            cells.append(fmt_scale(row["scale"]))
        total = row["module"] == "*"
        reason = why(row)
        cells += [
            text(row["target"]), text(module_label(row["module"]) if total else "  " + row["module"]),
            fmt_ratio(row["old"]) if row["old_verdict"] is not None else "",
            fmt_ratio(row["new"]) if row["new_verdict"] is not None else "",
            fmt_delta(row["delta"]), fmt_ci_pair(row["old_ci"]), fmt_ci_pair(row["new_ci"]),
            text(row["verdict"], style=REGRESSION_STYLE.get(row["verdict"], "")), text(reason),
        ]
        table.add_row(*cells, style="bold" if total else None)
    return table


def render_regression(old: RunRecord, new: RunRecord, band: Band | None = None, mode: str | GateMode = GateMode.CI,
                      modules: bool = True) -> RenderableType:
    """The regression report: warnings (if any), config changes, and the side-by-side table."""
    band = band or Band()
    parts: list[RenderableType] = []
    warnings = compatibility_warnings(old, new)
    if warnings:
        parts.append(warnings_panel(warnings))
    changes = config_changes(old, new)
    if changes:
        parts.append(text("changed: " + "; ".join(changes), style="dim"))
    parts.append(text(rule_text(old, new), style="dim"))
    rows = regression_rows(old, new, band, mode)
    subject = new.data["subject"]
    title = f"regression report — subject {subject['name']}" + (f" ({subject['preset']})" if subject.get("preset")
                                                                 else "")
    parts.append(regression_table(rows, band, modules, title))
    if new.kind == "sweep":
        parts += [suggestion_text(suggest_scale(new, band, mode=mode))]
    return Group(*parts)
