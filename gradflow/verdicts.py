"""One verdict model: the words every layer uses for a retention row, its judgement and its change.

* :class:`RowStatus` — what the measurement found for a row (``ok``, ``no_grad``, ``not_run``, ...).
* :class:`Verdict` — a row judged against a retention :class:`Band` (``ok``, ``starved``, ``flooded``,
  ``uncertain``; otherwise the status as a verdict: ``no grad``, ``not run``, ...).
* :class:`GateMode` — what a gate judges: the point estimate, the interval (``ci``), or ``strict``.
* :class:`Change` and :class:`Transition` — a row between two runs (``improved``/``regressed``/... and,
  when it crossed the band, ``fixed``/``broken``).

There is one notion of passing (:func:`passes`) and one rule for a change between runs
(:func:`judge_change`, with one default tolerance): the gate, the regression report and every renderer use
them. Renderers read ``Change``/``Transition`` fields; they never parse summary strings.

Nothing here imports torch or any other gradflow layer but :mod:`gradflow.errors`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, TypedDict

from .errors import GradflowError

#: Retention may move this much between two runs before a change is called real (when no interval of the
#: change is available), and by default a baseline check fails when retention drops more than this.
DEFAULT_TOLERANCE = 0.05


class RowStatus(StrEnum):
    """What the measurement found for one retention row (stored in run records)."""

    OK = "ok"
    NO_GRAD = "no_grad"
    NOT_RUN = "not_run"
    UNDEFINED = "undefined"
    NON_FINITE = "non_finite"
    NO_EFFECT = "no_effect"


class Verdict(StrEnum):
    """A row judged against a band (shown in tables, used by gates)."""

    OK = "ok"
    STARVED = "starved"
    FLOODED = "flooded"
    UNCERTAIN = "uncertain"
    NO_EFFECT = "no effect"
    NO_GRAD = "no grad"
    NOT_RUN = "not run"
    UNDEFINED = "undefined"
    NON_FINITE = "non-finite"


STATUS_VERDICT: dict[RowStatus, Verdict] = {
    RowStatus.NO_EFFECT: Verdict.NO_EFFECT,
    RowStatus.NO_GRAD: Verdict.NO_GRAD,
    RowStatus.NOT_RUN: Verdict.NOT_RUN,
    RowStatus.UNDEFINED: Verdict.UNDEFINED,
    RowStatus.NON_FINITE: Verdict.NON_FINITE,
}


class GateMode(StrEnum):
    """``ci``: fail only when the whole interval is outside the band; ``point``: the point estimate decides;
    ``strict``: fail unless the whole interval is inside."""

    CI = "ci"
    POINT = "point"
    STRICT = "strict"


class Change(StrEnum):
    """How a row moved between a baseline run and a new run."""

    IMPROVED = "improved"
    REGRESSED = "regressed"
    DRIFTED = "drifted"  # a real change that stays inside the band either way
    UNCHANGED = "unchanged"
    UNCERTAIN = "uncertain"  # the interval of the change reaches both inside and beyond the tolerance
    ADDED = "added"
    REMOVED = "removed"


class Transition(StrEnum):
    """Whether a changed row crossed the band: into it (``fixed``), out of it (``broken``), or neither."""

    FIXED = "fixed"
    BROKEN = "broken"
    NONE = ""


class RetentionRow(TypedDict):
    """One row of a run record's retention table."""

    branch: str
    target: str
    module: str  # "*" for the whole target
    scale: float | None
    norm_with: float | None
    norm_without: float | None
    retention: float | None
    ci_low: float | None
    ci_high: float | None
    n_batches: int
    per_batch: list[float | None]
    status: str
    note: str


@dataclass(frozen=True)
class Band:
    """Acceptable retention: ``min_retention <= retention`` and, if set, ``retention <= max_retention``."""

    min_retention: float | None = 0.8
    max_retention: float | None = None

    def __post_init__(self) -> None:
        low, high = self.min_retention, self.max_retention
        for name, value in (("min_retention", low), ("max_retention", high)):
            if value is not None and not (isinstance(value, int | float) and math.isfinite(value)):
                raise GradflowError(f"retention band: {name} must be a finite number, got {value!r}.")
        if low is not None and high is not None and low > high:
            raise GradflowError(f"retention band is empty: min_retention {low} > max_retention {high}.")

    def describe(self) -> str:
        """``"[0.8, ∞)"`` style text."""
        low = "0" if self.min_retention is None else f"{self.min_retention:g}"
        high = "∞)" if self.max_retention is None else f"{self.max_retention:g}]"
        return f"[{low}, {high}"

    def distance(self, value: float) -> float:
        """How far ``value`` lies outside the band (0 inside it)."""
        if self.min_retention is not None and value < self.min_retention:
            return self.min_retention - value
        if self.max_retention is not None and value > self.max_retention:
            return value - self.max_retention
        return 0.0


def gate_mode(mode: str | GateMode | None, default: str | GateMode = GateMode.CI) -> GateMode:
    """Validate a gate mode name (``ci``, ``point``, ``strict``); ``None`` gives ``default``."""
    value = default if mode is None else mode
    try:
        return GateMode(value)
    except ValueError:
        raise GradflowError(
            f"gate mode {value!r} is unknown; use one of: {', '.join(m.value for m in GateMode)}.") from None


def verdict(row: Any, band: Band, mode: str | GateMode = GateMode.CI) -> Verdict:
    """The verdict of one retention row against ``band``.

    ``ok`` inside the band; ``starved`` below it; ``flooded`` above it; ``uncertain`` when (in ``ci`` and
    ``strict`` mode) the confidence interval straddles a bound, or there is no interval (one batch);
    otherwise the row's status as a verdict. ``point`` mode judges the point estimate.
    """
    status = RowStatus(row["status"])
    if status is not RowStatus.OK:
        return STATUS_VERDICT[status]
    value = row["retention"]
    if GateMode(mode) is GateMode.POINT:
        low = high = value
    elif row.get("ci_low") is None:
        return Verdict.UNCERTAIN
    else:
        low, high = row["ci_low"], row["ci_high"]
    lower, upper = band.min_retention, band.max_retention
    if lower is not None and high < lower:
        return Verdict.STARVED
    if upper is not None and low > upper:
        return Verdict.FLOODED
    if (lower is not None and low < lower) or (upper is not None and high > upper):
        return Verdict.UNCERTAIN
    return Verdict.OK


def passes(label: str | Verdict, mode: str | GateMode = GateMode.CI) -> bool:
    """Whether a verdict passes a gate in ``mode``: ``ok`` always, ``uncertain`` only in ``ci`` mode.

    ``no effect`` does not pass: a branch that cannot change the target's gradient says nothing about it.
    """
    label = Verdict(label)
    return label is Verdict.OK or (label is Verdict.UNCERTAIN and GateMode(mode) is GateMode.CI)


def _rank(label: Verdict, mode: GateMode) -> int:
    """0 passing, 1 uncertain, 2 failing: how good a verdict is, for comparing two runs."""
    if passes(label, mode):
        return 0
    return 1 if label is Verdict.UNCERTAIN else 2


def finite(value: Any) -> float | None:
    """``value`` as a float when it is a finite number, else ``None``."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


@dataclass(frozen=True)
class ChangeJudgement:
    """The judgement of one row between two runs."""

    change: Change
    transition: Transition
    note: str
    delta: float | None


def judge_change(
    old_row: Any,
    new_row: Any,
    band: Band,
    mode: str | GateMode = GateMode.CI,
    tolerance: float = DEFAULT_TOLERANCE,
    interval: tuple[float, float] | None = None,
) -> ChangeJudgement:
    """The one rule for a row between two runs (regression report and baseline gate alike).

    ``interval`` is a confidence interval of ``new - old`` retention (paired by batch when the runs share
    their batches). ``ci`` mode: the change is real when that interval lies wholly beyond ``±tolerance``,
    none when it lies wholly within, and ``uncertain`` otherwise (also without an interval); ``strict``: real
    when any part lies beyond; ``point``: when ``|new - old| > tolerance``. A real change is judged against
    the band: a better band verdict is ``improved``, a worse one ``regressed``; with equal verdicts, moving
    closer to the band is ``improved``, farther ``regressed``, and inside the band either way ``drifted``.
    Rows without a retention (no grad, ...) are judged by their verdicts alone.
    """
    mode = GateMode(mode)
    old_v, new_v = verdict(old_row, band, mode), verdict(new_row, band, mode)
    old, new = finite(old_row.get("retention")), finite(new_row.get("retention"))
    transition = Transition.NONE
    if _rank(old_v, mode) > 0 and _rank(new_v, mode) == 0:
        transition = Transition.FIXED
    elif _rank(old_v, mode) == 0 and _rank(new_v, mode) > 0:
        transition = Transition.BROKEN
    if old is None or new is None:
        if _rank(new_v, mode) != _rank(old_v, mode):
            better = _rank(new_v, mode) < _rank(old_v, mode)
            return ChangeJudgement(Change.IMPROVED if better else Change.REGRESSED, transition,
                                   f"was {old_v}, now {new_v}", None)
        note = "" if old_v == new_v else f"was {old_v}, now {new_v}"
        return ChangeJudgement(Change.UNCHANGED, Transition.NONE, note, None)
    delta = new - old
    if mode is GateMode.POINT:
        shown = f"change {delta:+.3f}"
        real = abs(delta) > tolerance
    elif interval is None:
        return ChangeJudgement(Change.UNCERTAIN, Transition.NONE,
                               f"change {delta:+.3f} without an interval (one batch): cannot tell; run more batches",
                               delta)
    else:
        low, high = interval
        shown = f"change {delta:+.3f}, CI [{low:+.3f}, {high:+.3f}]"
        if mode is GateMode.CI and not (low > tolerance or high < -tolerance):
            if -tolerance <= low and high <= tolerance:
                return ChangeJudgement(Change.UNCHANGED, Transition.NONE, f"{shown} within ±{tolerance:g}", delta)
            return ChangeJudgement(Change.UNCERTAIN, Transition.NONE,
                                   f"{shown} reaches beyond ±{tolerance:g}: cannot tell; run more batches", delta)
        real = high > tolerance or low < -tolerance
    if not real:
        return ChangeJudgement(Change.UNCHANGED, Transition.NONE, f"{shown} within ±{tolerance:g}", delta)
    if _rank(new_v, mode) != _rank(old_v, mode):
        better = _rank(new_v, mode) < _rank(old_v, mode)
        return ChangeJudgement(Change.IMPROVED if better else Change.REGRESSED, transition,
                               f"{shown}: {old_v} -> {new_v}", delta)
    d_old, d_new = band.distance(old), band.distance(new)
    if d_new < d_old:
        return ChangeJudgement(Change.IMPROVED, transition,
                               f"{shown}: " + ("into the band" if d_new == 0 else "toward the band"), delta)
    if d_new > d_old:
        return ChangeJudgement(Change.REGRESSED, transition,
                               f"{shown}: " + ("out of the band" if d_old == 0 else "away from the band"), delta)
    return ChangeJudgement(Change.DRIFTED, Transition.NONE, f"{shown}: moved within the band", delta)


def describe_mode(mode: str | GateMode, confidence: float = 0.95) -> str:
    """One sentence saying what the gate mode judges, for tables and messages."""
    pct = int(round(confidence * 100))
    mode = GateMode(mode)
    if mode is GateMode.POINT:
        return "gate: point — fails when the point estimate lies outside the band"
    if mode is GateMode.STRICT:
        return f"gate: strict — fails unless the whole {pct}% CI lies inside the band"
    return (f"gate: ci — fails only when the whole {pct}% CI lies outside the band; 'uncertain' (the CI "
            "straddles a bound) passes; rows without a CI (1 batch) use the point estimate")


def row_name(row: Any) -> str:
    """``"image_cross_attn -> image_adapter (all)"`` style name of a retention row."""
    module = "(all)" if row["module"] == "*" else row["module"]
    scale = "" if row.get("scale") is None else f" @ scale {row['scale']:g}"
    return f"{row['branch']} -> {row['target']} {module}{scale}"
