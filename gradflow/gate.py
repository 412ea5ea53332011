"""Gates: a retention band, the verdict of a retention row against it, and pass/fail decisions.

Three gate modes decide whether a row passes (``gradflow check --gate``, ``assert_retention(gate=...)``):

``ci`` (default)
    Fail only when the whole confidence interval lies outside the band (``starved`` / ``flooded``).
    A row whose interval straddles a bound is ``uncertain`` and **passes** (with a note): the data do not
    show a violation. Rows without an interval (one batch) use the point estimate.
``point``
    Fail when the point estimate lies outside the band.
``strict``
    Fail unless the whole confidence interval lies inside the band (``uncertain`` fails).

In every mode a row whose status is not ``ok`` fails: ``no grad``, ``undefined``, ``non-finite``, and
``no effect`` (the branch is not on the target's gradient path, so the measurement says nothing: it is
reported, not counted as a pass).

This module reads rows and records only; it imports nothing heavy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

from .errors import GradflowError

GateMode = Literal["point", "ci"]
CheckMode = Literal["point", "ci", "strict"]
CHECK_MODES: tuple[str, ...] = ("ci", "point", "strict")


@dataclass(frozen=True)
class Band:
    """Acceptable retention: ``min_retention <= retention`` and, if set, ``retention <= max_retention``."""

    min_retention: float | None = 0.8
    max_retention: float | None = None

    def __post_init__(self) -> None:
        low, high = self.min_retention, self.max_retention
        if low is not None and high is not None and low > high:
            raise GradflowError(f"retention band is empty: min_retention {low} > max_retention {high}.")

    def describe(self) -> str:
        """``"[0.8, ∞)"`` style text."""
        low = "0" if self.min_retention is None else f"{self.min_retention:g}"
        high = "∞)" if self.max_retention is None else f"{self.max_retention:g}]"
        return f"[{low}, {high}"


PASSING = {"ok", "no effect"}


def verdict(row: dict[str, Any], band: Band, mode: GateMode = "ci") -> str:
    """The verdict of one retention row.

    ``ok`` inside the band; ``starved`` below it; ``flooded`` above it; ``uncertain`` when (in ``ci``
    mode) the confidence interval straddles a bound; ``no effect`` when the branch is not on the
    target's gradient path; otherwise the row's status (``no grad``, ``undefined``, ``non-finite``).
    With one batch there is no interval and ``ci`` mode falls back to the point estimate.
    """
    status = row["status"]
    if status == "no_effect":
        return "no effect"
    if status != "ok":
        return status.replace("_", " ").replace("non finite", "non-finite")
    value = row["retention"]
    low, high = (value, value) if mode == "point" or row["ci_low"] is None else (row["ci_low"], row["ci_high"])
    lower, upper = band.min_retention, band.max_retention
    if lower is not None and high < lower:
        return "starved"
    if upper is not None and low > upper:
        return "flooded"
    if (lower is not None and low < lower) or (upper is not None and high > upper):
        return "uncertain"
    return "ok"


def check_mode(mode: str | None, default: str = "ci") -> str:
    """Validate a gate mode name (``ci``, ``point``, ``strict``); ``None`` gives ``default``."""
    mode = default if mode is None else mode
    if mode not in CHECK_MODES:
        raise GradflowError(f"gate mode {mode!r} is unknown; use one of: {', '.join(CHECK_MODES)}.")
    return mode


def verdict_mode(mode: str) -> GateMode:
    """The :func:`verdict` mode used for a gate mode (``strict`` judges the interval like ``ci``)."""
    return "point" if mode == "point" else "ci"


def passes(label: str, mode: str = "ci") -> bool:
    """Whether a verdict label passes the gate in ``mode`` (see the module docstring)."""
    if label == "ok":
        return True
    return label == "uncertain" and mode == "ci"


def describe_mode(mode: str, confidence: float = 0.95) -> str:
    """One sentence saying what the gate mode judges, for tables and messages."""
    pct = int(round(confidence * 100))
    if mode == "point":
        return "gate: point — fails when the point estimate lies outside the band"
    if mode == "strict":
        return f"gate: strict — fails unless the whole {pct}% CI lies inside the band"
    return (f"gate: ci — fails only when the whole {pct}% CI lies outside the band; 'uncertain' (the CI "
            "straddles a bound) passes; rows without a CI (1 batch) use the point estimate")


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{value:.3f}"


def explain(row: dict[str, Any], band: Band, mode: str, label: str) -> str:
    """Why a row got its verdict, in words (``"retention 0.375, 95% CI [0.33, 0.41] below 0.8"``)."""
    if label == "no effect":
        return (f"branch {row['branch']!r} cannot affect target {row['target']!r} (identical gradient norms with "
                "and without it: not on its gradient path); reported, not counted as a pass")
    if label in ("no grad", "undefined", "non-finite"):
        return row.get("note") or label
    value = f"retention {_fmt(row['retention'])}"
    if row.get("ci_low") is not None:
        value += f", CI [{_fmt(row['ci_low'])}, {_fmt(row['ci_high'])}]"
    where = {
        "ok": "inside", "starved": "below", "flooded": "above", "uncertain": "straddles",
    }.get(label, label)
    text = f"{value} {where} the band {band.describe()}"
    if label == "uncertain":
        text += " (passes in ci mode)" if mode == "ci" else f" (fails in {mode} mode)"
    return text


# ------------------------------------------------------------------------------------------- checks
@dataclass
class Check:
    """One gated item of a spec: a preflight item, a retention row or a baseline comparison."""

    kind: str  # "preflight" | "retention" | "baseline"
    name: str
    passed: bool
    detail: str = ""
    verdict: str | None = None
    row: dict[str, Any] | None = field(default=None, repr=False)


def row_name(row: dict[str, Any]) -> str:
    """``"image_cross_attn -> image_adapter (all)"`` style name of a retention row."""
    module = "(all)" if row["module"] == "*" else row["module"]
    scale = "" if row.get("scale") is None else f" @ scale {row['scale']:g}"
    return f"{row['branch']} -> {row['target']} {module}{scale}"


def gate_row(row: dict[str, Any], band: Band, mode: str = "ci") -> Check:
    """Gate one retention row against ``band`` in gate ``mode``."""
    label = verdict(row, band, verdict_mode(mode))
    return Check("retention", row_name(row), passes(label, mode), explain(row, band, mode, label), label, row)


def baseline_checks(old: Any, new: Any, keys: list[tuple[str, str, str]], band: Band, mode: str = "ci",
                    tolerance: float = 0.05, direction: str = "down") -> list[Check]:
    """Compare the gated rows (``(branch, target, module)`` keys) of ``new`` against the baseline ``old``.

    A row fails when its retention dropped by more than ``tolerance`` below the baseline's (``direction
    = "both"``: moved by more than ``tolerance`` either way). The mode decides what "dropped" means:
    ``point`` the point estimate, ``ci`` the whole new CI (the point without one), ``strict`` any part
    of it. A row that was measurable in the baseline and is not now (no grad, non-finite, ...) fails;
    a row absent from the baseline is reported and passes.
    """
    pairs = _pair_rows(old, new)
    checks = []
    for key in keys:
        old_row, new_row, note = pairs.get(key, (None, None, ""))
        name = f"baseline {row_name(new_row) if new_row else ' -> '.join(key)}"
        if new_row is None:
            continue
        if old_row is None:
            checks.append(Check("baseline", name, True, "not in the baseline record (new row)", "added", new_row))
            continue
        before, after = _finite(old_row.get("retention")), _finite(new_row.get("retention"))
        if before is None or after is None:
            broke = before is not None and after is None
            detail = f"baseline {old_row['status']}, now {new_row['status']}" + (f" ({note})" if note else "")
            checks.append(Check("baseline", name, not broke, detail, "regressed" if broke else "unchanged",
                                new_row))
            continue
        if mode == "point" or new_row.get("ci_low") is None:
            low = high = after
        else:
            low, high = new_row["ci_low"], new_row["ci_high"]
        judged = high if mode == "ci" else low  # ci: the whole CI must be below; strict: any part of it
        dropped = judged < before - tolerance
        judged_up = low if mode == "ci" else high
        rose = direction == "both" and judged_up > before + tolerance
        failed = dropped or rose
        delta = after - before
        detail = f"retention {before:.3f} -> {after:.3f} ({delta:+.3f}; tolerance {tolerance:g}, {direction})"
        if new_row.get("ci_low") is not None and mode != "point":
            detail += f", new CI [{low:.3f}, {high:.3f}]"
        if note:
            detail += f"; {note}"
        label = "regressed" if dropped else ("drifted" if rose else "unchanged")
        checks.append(Check("baseline", name, not failed, detail, label, new_row))
    return checks


def _finite(value: Any) -> float | None:
    if isinstance(value, int | float) and math.isfinite(value):
        return float(value)
    return None


def _pair_rows(old: Any, new: Any) -> dict[tuple[str, str, str], tuple[Any, Any, str]]:
    """``(branch, target, module) -> (old_row, new_row, note)`` for compare records (scale None)."""
    old_rows = {(r["branch"], r["target"], r["module"]): r for r in old.rows if r.get("scale") is None}
    new_rows = {(r["branch"], r["target"], r["module"]): r for r in new.rows if r.get("scale") is None}
    notes: dict[tuple[str, str, str], str] = {}
    try:  # the regression report's judgement (if present) adds its summary, e.g. "0.961 -> 0.375 (broken)"
        from .report.regression import regression_rows
    except ImportError:  # pragma: no cover - report/ is optional for the gate
        regression_rows = None
    if regression_rows is not None:
        try:
            for entry in regression_rows(old, new):
                if entry.get("scale") is None and entry.get("verdict") == "regressed":
                    notes[(entry["branch"], entry["target"], entry["module"])] = (
                        f"regression report: {entry.get('summary') or entry.get('note', '')}")
        except Exception:  # noqa: BLE001 - the note is optional; the gate does not depend on it
            notes = {}
    return {key: (old_rows.get(key), row, notes.get(key, "")) for key, row in new_rows.items()}
