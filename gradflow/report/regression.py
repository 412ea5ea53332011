"""Regression report: compare two run records row by row (pure functions, no I/O, no rendering).

Each row present in both records is judged by :func:`gradflow.verdicts.judge_change` — the same rule the
baseline gate uses — on a confidence interval of the change of retention (:func:`change_interval`).
Rows found in only one record are ``added`` or ``removed``. A row whose change crossed the band carries a
``transition`` (``fixed`` / ``broken``); ``summary`` reads ``retention 0.375 -> 0.961 (fixed)``.
"""

from __future__ import annotations

from typing import Any

from ..comparison import change_intervals
from ..record import RunRecord
from ..verdicts import (
    DEFAULT_TOLERANCE,
    Band,
    Change,
    GateMode,
    Transition,
    finite,
    judge_change,
    verdict,
)
from .format import fmt_ratio

CHANGES = tuple(Change)

RowKey = tuple[str, str, str, float | None]


def row_key(row: dict[str, Any]) -> RowKey:
    """The identity of a retention row across records: (branch, target, module, scale)."""
    return (row["branch"], row["target"], row["module"], row.get("scale"))


def _ci(row: dict[str, Any]) -> tuple[float, float] | None:
    low, high = finite(row.get("ci_low")), finite(row.get("ci_high"))
    return None if low is None or high is None else (low, high)


def regression_rows(old: RunRecord, new: RunRecord, band: Band | None = None, mode: str | GateMode = GateMode.CI,
                    tolerance: float = DEFAULT_TOLERANCE) -> list[dict[str, Any]]:
    """One dict per (branch, target, module, scale) row of either record, in the new record's order
    followed by rows only the old record has.

    Keys: ``branch target module scale old new delta old_ci new_ci delta_ci verdict`` (the
    :class:`~gradflow.verdicts.Change`), ``transition`` (:class:`~gradflow.verdicts.Transition`),
    ``old_verdict``/``new_verdict`` (each row against ``band``), ``note`` (why) and ``summary``.
    """
    band = band or Band()
    interval_of, kind = change_intervals(old, new)
    old_rows = {row_key(r): r for r in old.rows}
    new_keys = {row_key(r) for r in new.rows}
    out: list[dict[str, Any]] = []

    def entry(key: RowKey, old_row: dict[str, Any] | None, new_row: dict[str, Any] | None) -> dict[str, Any]:
        old_value = finite(old_row["retention"]) if old_row else None
        new_value = finite(new_row["retention"]) if new_row else None
        interval, row_kind = None, kind
        if old_row is None:
            change, transition, note = Change.ADDED, Transition.NONE, "only in the new record"
        elif new_row is None:
            change, transition, note = Change.REMOVED, Transition.NONE, "only in the old record"
        else:
            interval = interval_of(old_row, new_row)
            if kind == "paired" and (old.samples(old_row) is None or new.samples(new_row) is None):
                row_kind = "unpaired"
            judged = judge_change(old_row, new_row, band, mode, tolerance, interval)
            change, transition, note = judged.change, judged.transition, judged.note
        delta = new_value - old_value if old_value is not None and new_value is not None else None
        summary = note
        if old_row is not None and new_row is not None:
            summary = f"retention {fmt_ratio(old_value)} -> {fmt_ratio(new_value)}"
            if transition is not Transition.NONE:
                summary += f" ({transition})"
        return {
            "branch": key[0], "target": key[1], "module": key[2], "scale": key[3],
            "old": old_value, "new": new_value, "delta": delta,
            "old_ci": _ci(old_row) if old_row else None, "new_ci": _ci(new_row) if new_row else None,
            "delta_ci": interval, "interval": row_kind if interval is not None else None,
            "verdict": change.value, "transition": transition.value,
            "old_verdict": verdict(old_row, band, mode).value if old_row else None,
            "new_verdict": verdict(new_row, band, mode).value if new_row else None,
            "note": note, "summary": summary,
        }

    for row in new.rows:
        key = row_key(row)
        out.append(entry(key, old_rows.get(key), row))
    for key, row in old_rows.items():
        if key not in new_keys:
            out.append(entry(key, row, None))
    return out


def why(row: dict[str, Any]) -> str:
    """The reason column of a regression row: the summary with its transition when the band was crossed."""
    return f"{row['summary']}; {row['note']}" if row["transition"] else row["note"]


def rule_text(old: RunRecord, new: RunRecord, tolerance: float = DEFAULT_TOLERANCE) -> str:
    """One sentence: how changes are judged for this pair of records (paired or not, the tolerance)."""
    _, kind = change_intervals(old, new)
    how = ("paired by batch (same subject, batches and seeds; a row its record's passes do not reproduce is "
           "judged unpaired)" if kind == "paired" else
           "unpaired (different batches or seeds: each row's change interval combines the two runs' intervals)")
    return (f"change of retention judged on its confidence interval, {how}: unchanged = wholly within "
            f"±{tolerance:g}, improved/regressed/drifted = wholly beyond it, uncertain = both")


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
    """``{change: count}`` over every :class:`~gradflow.verdicts.Change`, in that order."""
    return {c.value: sum(1 for r in rows if r["verdict"] == c) for c in CHANGES}
