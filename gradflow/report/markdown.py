"""Markdown rendering (GitHub-flavoured tables for PR comments). Every name is escaped with md_escape."""

from __future__ import annotations

from typing import Any

from ..record import RunRecord
from ..verdicts import Band, Change, GateMode, Verdict, passes, verdict
from .format import (
    batches_text,
    ci_label,
    fmt_ci,
    fmt_ci_pair,
    fmt_delta,
    fmt_norm,
    fmt_ratio,
    fmt_scale,
    md_escape,
    measurement_notes,
    module_label,
    uncertain_hint,
)
from .regression import compatibility_warnings, config_changes, count_verdicts, regression_rows, rule_text, why
from .sweep import suggest_scale


def _table(header: list[str], align: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join({"l": "---", "r": "---:"}[a] for a in align) + "|"]
    lines += ["| " + " | ".join(cells) + " |" for cells in rows]
    return lines


def _title(record: RunRecord, what: str) -> str:
    subject = record.data["subject"]
    text = f"### gradflow {what} — subject {md_escape(subject['name'])}"
    if subject.get("preset"):
        text += f" ({md_escape(subject['preset'])})"
    return text


def _verdict_cell(label: str, mode: str | GateMode) -> str:
    return label if passes(label, mode) else f"**{label}**"


def record_markdown(record: RunRecord, band: Band | None = None, mode: str | GateMode = GateMode.CI,
                    modules: bool = True) -> str:
    """The retention table of one record as markdown (whole-target rows bold; module rows indented)."""
    band = band or Band()
    if record.kind == "learn":
        from .learning import learning_markdown

        return learning_markdown(record)
    sweep = record.kind == "sweep"
    header = ["branch", *(["scale"] if sweep else []), "target", "module", "norm with", "norm without", "retention",
              ci_label(record), "verdict"]
    align = ["l", *(["r"] if sweep else []), "l", "l", "r", "r", "r", "r", "l"]
    rows = []
    for row in record.rows:
        total = row["module"] == "*"
        if not total and not modules:
            continue
        module = "**(all)**" if total else "&nbsp;&nbsp;" + md_escape(row["module"])
        retention = fmt_ratio(row["retention"])
        rows.append([
            md_escape(row["branch"]), *([fmt_scale(row["scale"])] if sweep else []), md_escape(row["target"]), module,
            fmt_norm(row["norm_with"]), fmt_norm(row["norm_without"]), f"**{retention}**" if total else retention,
            fmt_ci(row), _verdict_cell(verdict(row, band, mode), mode),
        ])
    lines = [_title(record, record.kind), "",
             f"band {band.describe()}, verdict on the {mode} estimate · {md_escape(batches_text(record))} · "
             f"seed {record.data['seed']}", ""]
    lines += _table(header, align, rows)
    if any(verdict(r, band, mode) is Verdict.UNCERTAIN for r in record.rows):
        lines += ["", md_escape(uncertain_hint(record))]
    notes, warnings = measurement_notes(record)
    if notes or warnings:
        lines += ["", *(f"> **warning:** {md_escape(w)}" for w in warnings),
                  *(f"> note: {md_escape(n)}" for n in notes)]
    if sweep:
        lines += ["", "**Suggestion:** " + md_escape(suggest_scale(record, band, mode=mode)["message"])]
    return "\n".join(lines) + "\n"


def regression_markdown(old: RunRecord, new: RunRecord, band: Band | None = None, mode: str | GateMode = GateMode.CI,
                        modules: bool = True, rows: list[dict[str, Any]] | None = None) -> str:
    """Baseline vs new as markdown: a warning block for mismatched records, then one row per comparison."""
    band = band or Band()
    rows = rows if rows is not None else regression_rows(old, new, band, mode)
    rows = [r for r in rows if modules or r["module"] == "*"]
    lines = [_title(new, "regression report"), ""]
    warnings = compatibility_warnings(old, new)
    if warnings:
        lines += ["> [!WARNING]", "> **Records may not be comparable.**"]
        lines += [f"> - {md_escape(w)}" for w in warnings]
        lines.append("")
    changes = config_changes(old, new)
    if changes:
        lines += ["Changed: " + "; ".join(md_escape(c) for c in changes), ""]
    lines += [md_escape(rule_text(old, new)), ""]
    counts = count_verdicts(rows)
    lines += [f"band {band.describe()} · " + ", ".join(f"{n} {v}" for v, n in counts.items() if n), ""]
    sweep = any(r["scale"] is not None for r in rows)
    header = ["branch", *(["scale"] if sweep else []), "target", "module", "baseline", "new", "delta", "baseline CI",
              "new CI", "verdict", "why"]
    align = ["l", *(["r"] if sweep else []), "l", "l", "r", "r", "r", "r", "r", "l", "l"]
    cells = []
    for row in rows:
        total = row["module"] == "*"
        result = row["verdict"]
        reason = why(row)
        cells.append([
            md_escape(row["branch"]), *([fmt_scale(row["scale"])] if sweep else []), md_escape(row["target"]),
            "**(all)**" if total else "&nbsp;&nbsp;" + md_escape(module_label(row["module"])),
            fmt_ratio(row["old"]) if row["old_verdict"] is not None else "",
            fmt_ratio(row["new"]) if row["new_verdict"] is not None else "",
            fmt_delta(row["delta"]), fmt_ci_pair(row["old_ci"]), fmt_ci_pair(row["new_ci"]),
            f"**{result}**" if result in (Change.IMPROVED, Change.REGRESSED) else result, md_escape(reason),
        ])
    lines += _table(header, align, cells)
    if new.kind == "sweep":
        lines += ["", "**Suggestion:** " + md_escape(suggest_scale(new, band, mode=mode)["message"])]
    return "\n".join(lines) + "\n"
