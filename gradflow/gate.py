"""Gates: pass/fail checks of retention rows and baseline comparisons, in one of three modes.

``ci`` (default)
    Fail only when the whole confidence interval lies outside the band (``starved`` / ``flooded``).
    A row whose interval straddles a bound is ``uncertain`` and **passes** (with a note): the data do not
    show a violation. Rows without an interval (one batch) use the point estimate.
``point``
    Fail when the point estimate lies outside the band.
``strict``
    Fail unless the whole confidence interval lies inside the band (``uncertain`` fails).

In every mode a row whose status is not ``ok`` fails: ``no grad``, ``not run``, ``undefined``,
``non-finite``, and ``no effect`` (the branch is not on the target's gradient path, so the measurement says
nothing: it is reported, not counted as a pass). Verdicts, passing and the change rule live in
:mod:`gradflow.verdicts`; this module turns them into :class:`Check` objects.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .comparison import unpaired_interval
from .verdicts import (
    DEFAULT_TOLERANCE,
    Band,
    Change,
    GateMode,
    Verdict,
    finite,
    judge_change,
    passes,
    row_name,
    verdict,
)

RowKey = tuple[str, str, str]
IntervalFn = Callable[[dict[str, Any], dict[str, Any]], "tuple[float, float] | None"]


def _fmt(value: Any) -> str:
    number = finite(value)
    return "—" if number is None else f"{number:.3f}"


def explain(row: dict[str, Any], band: Band, mode: str | GateMode, label: Verdict) -> str:
    """Why a row got its verdict, in words (``"retention 0.375, CI [0.33, 0.41] below the band [0.8, ∞)"``)."""
    if label is Verdict.NO_EFFECT:
        return (f"branch {row['branch']!r} cannot affect target {row['target']!r} (identical gradient norms with "
                "and without it: not on its gradient path); reported, not counted as a pass")
    if label in (Verdict.NO_GRAD, Verdict.NOT_RUN, Verdict.UNDEFINED, Verdict.NON_FINITE):
        return row.get("note") or label.value
    value = f"retention {_fmt(row['retention'])}"
    if label is Verdict.UNCERTAIN and row.get("ci_low") is None:
        return (f"{value}: one batch has no interval, so the band {band.describe()} cannot be decided; run with "
                "--batches auto or more batches" + (" (passes in ci mode)" if GateMode(mode) is GateMode.CI
                                                    else f" (fails in {mode} mode)"))
    if row.get("ci_low") is not None:
        value += f", CI [{_fmt(row['ci_low'])}, {_fmt(row['ci_high'])}]"
    where = {Verdict.OK: "inside", Verdict.STARVED: "below", Verdict.FLOODED: "above",
             Verdict.UNCERTAIN: "straddles"}[label]
    text = f"{value} {where} the band {band.describe()}"
    if label is Verdict.UNCERTAIN:
        mode = GateMode(mode)
        text += (f": {row.get('n_batches', '?')} batches cannot decide; run with --batches auto or more batches"
                 + (" (passes in ci mode)" if mode is GateMode.CI else f" (fails in {mode} mode)"))
    return text


@dataclass
class Check:
    """One gated item of a spec: a preflight item, a retention row or a baseline comparison."""

    kind: str  # "preflight" | "retention" | "baseline"
    name: str
    passed: bool
    detail: str = ""
    verdict: str | None = None
    row: dict[str, Any] | None = field(default=None, repr=False)


def gate_row(row: dict[str, Any], band: Band, mode: str | GateMode = GateMode.CI) -> Check:
    """Gate one retention row against ``band`` in gate ``mode``."""
    label = verdict(row, band, mode)
    return Check("retention", row_name(row), passes(label, mode), explain(row, band, mode, label), label.value, row)


def baseline_checks(old: Any, new: Any, keys: Sequence[RowKey], band: Band, mode: str | GateMode = GateMode.CI,
                    tolerance: float = DEFAULT_TOLERANCE, direction: str = "down",
                    interval: IntervalFn | None = unpaired_interval) -> list[Check]:
    """Compare the gated rows (``(branch, target, module)`` keys) of ``new`` against the baseline ``old``.

    The change of each row is judged by :func:`gradflow.verdicts.judge_change` with the spec's
    ``tolerance`` (``interval(old_row, new_row)`` gives the confidence interval of the change: see
    :func:`gradflow.comparison.change_intervals`; by default from the two rows' own intervals).
    A row fails when its retention dropped beyond the tolerance (``direction = "both"``: moved beyond it
    either way), or when it was measurable in the baseline and is not now. A row absent from the baseline
    is reported and passes.
    """
    old_rows = {(r["branch"], r["target"], r["module"]): r for r in old.rows if r.get("scale") is None}
    new_rows = {(r["branch"], r["target"], r["module"]): r for r in new.rows if r.get("scale") is None}
    checks = []
    for key in keys:
        new_row = new_rows.get(key)
        if new_row is None:
            continue
        name = f"baseline {row_name(new_row)}"
        old_row = old_rows.get(key)
        if old_row is None:
            checks.append(Check("baseline", name, True, "not in the baseline record (new row)", Change.ADDED.value,
                                new_row))
            continue
        before, after = finite(old_row.get("retention")), finite(new_row.get("retention"))
        if before is None or after is None:
            broke = before is not None and after is None
            detail = f"baseline {old_row['status']}, now {new_row['status']}"
            label = Change.REGRESSED if broke else Change.UNCHANGED
            checks.append(Check("baseline", name, not broke, detail, label.value, new_row))
            continue
        judged = judge_change(old_row, new_row, band, mode, tolerance,
                              interval(old_row, new_row) if interval is not None else None)
        real = judged.change not in (Change.UNCHANGED, Change.UNCERTAIN)
        dropped = real and after < before
        rose = real and after > before
        failed = dropped or (rose and direction == "both")
        label = Change.REGRESSED if dropped else (Change.DRIFTED if rose else judged.change)
        detail = f"retention {before:.3f} -> {after:.3f} ({judged.note}; tolerance {tolerance:g}, {direction})"
        checks.append(Check("baseline", name, not failed, detail, label.value, new_row))
    return checks
