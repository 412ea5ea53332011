"""The machine-readable report (``gradflow report --json``): verdicts, suggestion and regression rows."""

from __future__ import annotations

from typing import Any

from ..record import RunRecord
from ..verdicts import Band, GateMode, verdict
from .regression import compatibility_warnings, config_changes, count_verdicts, regression_rows
from .sweep import suggest_scale

REPORT_SCHEMA = "gradflow/report"
REPORT_VERSION = 1
_ROW_KEYS = ("branch", "target", "module", "scale", "norm_with", "norm_without", "retention", "ci_low", "ci_high",
             "n_batches", "status")


def report_data(record: RunRecord, band: Band | None = None, mode: str | GateMode = GateMode.CI, modules: bool = True,
                baseline: RunRecord | None = None) -> dict[str, Any]:
    """A JSON-ready summary of what the other renderers show (numbers copied from the records)."""
    band = band or Band()
    subject = record.data["subject"]
    data: dict[str, Any] = {
        "schema": REPORT_SCHEMA,
        "schema_version": REPORT_VERSION,
        "source": record.source,
        "kind": record.kind,
        "subject": {"name": subject.get("name"), "preset": subject.get("preset")},
        "band": {"min_retention": band.min_retention, "max_retention": band.max_retention,
                 "mode": str(GateMode(mode))},
        "rows": [
            {**{k: row.get(k) for k in _ROW_KEYS}, "verdict": verdict(row, band, mode).value}
            for row in record.rows if modules or row["module"] == "*"
        ],
    }
    if record.kind == "sweep":
        data["suggestion"] = suggest_scale(record, band, mode=mode)
    if record.kind == "learn":
        data["learning"] = record.data["learning"]["rows"]
    if baseline is not None:
        rows = [r for r in regression_rows(baseline, record, band, mode) if modules or r["module"] == "*"]
        data["regression"] = {
            "baseline": baseline.source,
            "warnings": compatibility_warnings(baseline, record),
            "changes": config_changes(baseline, record),
            "counts": count_verdicts(rows),
            "rows": rows,
        }
    return data
