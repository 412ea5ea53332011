"""Regression report: compare two run records row by row (pure functions, no I/O, no rendering).

Rule for the verdict of a row present in both records (documented in the README of ``gradflow report``):

* **unchanged** when the two confidence intervals overlap, or, when either row has no interval (one
  batch), when ``|new - old| <= tolerance`` (default :data:`TOLERANCE` = 0.02 retention).
* otherwise the change is real, and it is judged against the band: first by the band verdicts (passing
  ``ok``/``no effect`` < ``uncertain`` < failing): a better verdict is **improved**, a worse one
  **regressed**; with equal verdicts, by the distance of the point estimate to the band (0 inside it):
  closer is **improved**, farther **regressed**, and both inside the band is **unchanged** (the ``note``
  says it moved within the band).
* rows whose retention is not a number (``no grad``, ``undefined``, ``non-finite``) are judged by their
  band verdicts: passing -> failing is regressed, failing -> passing improved, anything else unchanged.

A row crossing into the band is summarised as ``retention 0.375 -> 0.961 (fixed)``; leaving it as
``(broken)``. Rows found in only one record are ``added`` or ``removed``.
"""

from __future__ import annotations

import math
from typing import Any

from ..gate import PASSING, Band, GateMode, verdict
from ..record import RunRecord
from .format import fmt_ratio

TOLERANCE = 0.02
VERDICTS = ("improved", "regressed", "unchanged", "added", "removed")

RowKey = tuple[str, str, str, float | None]


def row_key(row: dict[str, Any]) -> RowKey:
    """The identity of a retention row across records: (branch, target, module, scale)."""
    return (row["branch"], row["target"], row["module"], row.get("scale"))


def _number(value: Any) -> float | None:
    if value is None or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def _ci(row: dict[str, Any]) -> tuple[float, float] | None:
    low, high = _number(row.get("ci_low")), _number(row.get("ci_high"))
    return None if low is None or high is None else (low, high)


def band_distance(value: float, band: Band) -> float:
    """How far ``value`` lies outside ``band`` (0 inside it)."""
    if band.min_retention is not None and value < band.min_retention:
        return band.min_retention - value
    if band.max_retention is not None and value > band.max_retention:
        return value - band.max_retention
    return 0.0


def _rank(label: str) -> int:
    """0 passing, 1 uncertain (interval straddles a bound), 2 failing."""
    return 0 if label in PASSING else (1 if label == "uncertain" else 2)


def _judge(old_row: dict[str, Any], new_row: dict[str, Any], old_v: str, new_v: str, band: Band,
           tolerance: float) -> tuple[str, str]:
    old, new = _number(old_row.get("retention")), _number(new_row.get("retention"))
    if old is None or new is None:
        if _rank(new_v) > _rank(old_v):
            return "regressed", f"was {old_v}, now {new_v}"
        if _rank(new_v) < _rank(old_v):
            return "improved", f"was {old_v}, now {new_v}"
        return "unchanged", "" if old_v == new_v else f"was {old_v}, now {new_v}"
    old_ci, new_ci = _ci(old_row), _ci(new_row)
    if old_ci is not None and new_ci is not None:
        if old_ci[0] <= new_ci[1] and new_ci[0] <= old_ci[1]:
            return "unchanged", "CIs overlap"
    elif abs(new - old) <= tolerance:
        return "unchanged", f"|delta| <= {tolerance:g}"
    if _rank(new_v) != _rank(old_v):
        better = _rank(new_v) < _rank(old_v)
        return ("improved" if better else "regressed"), f"{old_v} -> {new_v}"
    d_old, d_new = band_distance(old, band), band_distance(new, band)
    if d_new < d_old:
        return "improved", "into the band" if d_new == 0 else "toward the band"
    if d_new > d_old:
        return "regressed", "out of the band" if d_old == 0 else "away from the band"
    return "unchanged", "moved within the band"


def _summary(old: float | None, new: float | None, old_v: str, new_v: str, result: str) -> str:
    text = f"retention {fmt_ratio(old)} -> {fmt_ratio(new)}"
    if result == "improved" and old_v not in PASSING and new_v in PASSING:
        text += " (fixed)"
    elif result == "regressed" and old_v in PASSING and new_v not in PASSING:
        text += " (broken)"
    return text


def regression_rows(old: RunRecord, new: RunRecord, band: Band | None = None, mode: GateMode = "ci",
                    tolerance: float = TOLERANCE) -> list[dict[str, Any]]:
    """One dict per (branch, target, module, scale) row of either record, in the new record's order
    followed by rows only the old record has.

    Keys: ``branch target module scale old new delta old_ci new_ci verdict`` (the regression verdict,
    one of :data:`VERDICTS`), plus ``old_verdict``/``new_verdict`` (each row against ``band``), ``note``
    (why) and ``summary`` (``"retention 0.375 -> 0.961 (fixed)"``).
    """
    band = band or Band()
    old_rows = {row_key(r): r for r in old.rows}
    new_keys = {row_key(r) for r in new.rows}
    out: list[dict[str, Any]] = []

    def entry(key: RowKey, old_row: dict[str, Any] | None, new_row: dict[str, Any] | None) -> dict[str, Any]:
        old_value = _number(old_row["retention"]) if old_row else None
        new_value = _number(new_row["retention"]) if new_row else None
        old_v = verdict(old_row, band, mode) if old_row else None
        new_v = verdict(new_row, band, mode) if new_row else None
        if old_row is None:
            result, note = "added", "only in the new record"
        elif new_row is None:
            result, note = "removed", "only in the old record"
        else:
            result, note = _judge(old_row, new_row, old_v, new_v, band, tolerance)
        delta = new_value - old_value if old_value is not None and new_value is not None else None
        both = old_row is not None and new_row is not None
        summary = _summary(old_value, new_value, old_v or "", new_v or "", result) if both else note
        return {
            "branch": key[0], "target": key[1], "module": key[2], "scale": key[3],
            "old": old_value, "new": new_value, "delta": delta,
            "old_ci": _ci(old_row) if old_row else None, "new_ci": _ci(new_row) if new_row else None,
            "verdict": result, "old_verdict": old_v, "new_verdict": new_v, "note": note,
            "summary": summary,
        }

    for row in new.rows:
        key = row_key(row)
        out.append(entry(key, old_rows.get(key), row))
    for key, row in old_rows.items():
        if key not in new_keys:
            out.append(entry(key, row, None))
    return out


def compatibility_warnings(old: RunRecord, new: RunRecord) -> list[str]:
    """Reasons the two records may not be comparable: schema, kind, subject name or preset differ."""
    warnings = []
    checks = [
        ("schema", old.data.get("schema"), new.data.get("schema")),
        ("schema version", old.data.get("schema_version"), new.data.get("schema_version")),
        ("record kind", old.kind, new.kind),
        ("subject", old.data["subject"].get("name"), new.data["subject"].get("name")),
        ("preset", old.data["subject"].get("preset"), new.data["subject"].get("preset")),
    ]
    for what, a, b in checks:
        if a != b:
            warnings.append(f"{what} differs: baseline {a!r}, new {b!r}; rows are matched by name only.")
    return warnings


def config_changes(old: RunRecord, new: RunRecord) -> list[str]:
    """Subject config keys whose values differ (often the point of the comparison), as 'key: a -> b'."""
    a, b = old.data["subject"].get("config") or {}, new.data["subject"].get("config") or {}
    changes = []
    for key in sorted(set(a) | set(b)):
        if a.get(key, "(unset)") != b.get(key, "(unset)"):
            changes.append(f"{key}: {a.get(key, '(unset)')!r} -> {b.get(key, '(unset)')!r}")
    for what in ("seed",):
        if old.data.get(what) != new.data.get(what):
            changes.append(f"{what}: {old.data.get(what)!r} -> {new.data.get(what)!r}")
    if old.data["batches"]["count"] != new.data["batches"]["count"]:
        changes.append(f"batches: {old.data['batches']['count']} -> {new.data['batches']['count']}")
    return changes


def count_verdicts(rows: list[dict[str, Any]]) -> dict[str, int]:
    """``{verdict: count}`` over :data:`VERDICTS`, in that order."""
    return {v: sum(1 for r in rows if r["verdict"] == v) for v in VERDICTS}
