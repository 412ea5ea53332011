"""The HTML report: one self-contained page (no scripts, no network, plots as inline SVG)."""

from __future__ import annotations

import json
from typing import Any

from ..record import RunRecord
from ..verdicts import Band, GateMode, verdict
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
    visible,
)
from .learning import learning_rows_html
from .regression import compatibility_warnings, config_changes, count_verdicts, regression_rows, rule_text, why
from .sweep import suggest_scale


def _environment() -> Any:
    import jinja2
    import markupsafe

    def shown(value: Any) -> Any:  # every string from a record or a model: control characters made visible
        return visible(value) if isinstance(value, str) and not isinstance(value, markupsafe.Markup) else value

    return jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined, keep_trailing_newline=True,
                              finalize=shown)


def _css_class(label: str) -> str:
    return label.replace(" ", "-")


def _metadata(record: RunRecord) -> list[tuple[str, str]]:
    data = record.data
    subject = data["subject"]
    env = data.get("environment", {})
    run = data.get("run", {})
    model = subject.get("model") or {}
    items = [
        ("subject", subject.get("name")),
        ("preset", subject.get("preset") or "—"),
        ("kind", record.kind),
        ("model", ", ".join(f"{k} {v}" for k, v in model.items())),
        ("branches", "; ".join(f"{name}: {b.get('selector')} ({b.get('mode')}, {len(b.get('modules', []))} modules)"
                               for name, b in data["branches"].items())),
        ("targets", "; ".join(f"{name}: {t.get('selector')} ({t.get('n_params')} params)"
                              for name, t in data["targets"].items())),
        ("seed", data.get("seed")),
        ("batches", f"{batches_text(record)}; pass seeds {', '.join(map(str, data['batches']['pass_seeds']))}"),
        ("intervals", str((data.get("interval") or {}).get("method", "—"))),
        ("confidence", data.get("confidence")),
        ("versions", ", ".join(f"{k} {v}" for k, v in env.items() if v is not None and not isinstance(v, bool))),
        ("when", f"{run.get('created', '—')} ({run.get('elapsed_s', '—')} s)"),
        ("record", record.source or "(in memory)"),
    ]
    return [(k, str(v)) for k, v in items]


def _config(record: RunRecord) -> list[tuple[str, str]]:
    config = record.data["subject"].get("config") or {}
    return [(str(k), v if isinstance(v, str) else json.dumps(v, default=str)) for k, v in sorted(config.items())]


def _rows(record: RunRecord, band: Band, mode: str | GateMode, modules: bool) -> list[dict[str, Any]]:
    out = []
    for row in record.rows:
        total = row["module"] == "*"
        if not total and not modules:
            continue
        label = verdict(row, band, mode).value
        out.append({
            "total": total, "branch": row["branch"], "target": row["target"], "module": module_label(row["module"]),
            "scale": fmt_scale(row["scale"]), "norm_with": fmt_norm(row["norm_with"]),
            "norm_without": fmt_norm(row["norm_without"]), "retention": fmt_ratio(row["retention"]),
            "ci": fmt_ci(row), "verdict": label, "verdict_class": _css_class(label), "note": row.get("note") or "",
        })
    return out


def _regression(old: RunRecord, new: RunRecord, band: Band, mode: str | GateMode, modules: bool) -> dict[str, Any]:
    rows = [r for r in regression_rows(old, new, band, mode) if modules or r["module"] == "*"]
    counts = count_verdicts(rows)
    shown = []
    for r in rows:
        shown.append({
            "total": r["module"] == "*", "branch": r["branch"], "target": r["target"],
            "module": module_label(r["module"]), "scale": fmt_scale(r["scale"]),
            "old": fmt_ratio(r["old"]) if r["old_verdict"] is not None else "",
            "new": fmt_ratio(r["new"]) if r["new_verdict"] is not None else "",
            "delta": fmt_delta(r["delta"]), "old_ci": fmt_ci_pair(r["old_ci"]), "new_ci": fmt_ci_pair(r["new_ci"]),
            "verdict": r["verdict"], "verdict_class": r["verdict"],
            "why": why(r),
        })
    return {
        "baseline": old.source or "(in memory)", "rows": shown, "rule": rule_text(old, new),
        "counts": ", ".join(f"{n} {v}" for v, n in counts.items() if n),
        "changes": "; ".join(config_changes(old, new)),
        "sweep": any(r["scale"] is not None for r in rows),
    }


def render_html(record: RunRecord, band: Band | None = None, mode: str | GateMode = GateMode.CI, *,
                baseline: RunRecord | None = None, modules: bool = True) -> str:
    """The whole report page as a string (write it with :func:`gradflow.files.write_atomic`)."""
    from .. import __version__
    from .plots import all_plots
    from .templates.page import PAGE

    band = band or Band()
    subject = record.data["subject"]
    title = f"gradflow {record.kind} report — {subject['name']}" + (
        f" ({subject['preset']})" if subject.get("preset") else "")
    suggestion = suggest_scale(record, band, mode=mode) if record.kind == "sweep" else None
    template = _environment().from_string(PAGE)
    notes, measurement_warnings = measurement_notes(record)
    learning = learning_rows_html(record) if record.kind == "learn" else None
    return template.render(
        learning=learning,
        notes=notes, measurement_warnings=measurement_warnings,
        title=title, band=band.describe(), mode=mode, metadata=_metadata(record), config=_config(record),
        suggestion=suggestion,
        warnings=compatibility_warnings(baseline, record) if baseline is not None else [],
        regression=_regression(baseline, record, band, mode, modules) if baseline is not None else None,
        rows=_rows(record, band, mode, modules), sweep=record.kind == "sweep", ci_label=ci_label(record),
        hidden_modules=0 if modules else sum(1 for r in record.rows if r["module"] != "*"),
        plots=all_plots(record, band, suggestion), version=__version__, source=record.source or "(in memory)",
    )
