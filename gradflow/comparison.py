"""Two run records side by side: are their batches paired, and the interval of a row's change.

When both records measured the same subject on the same batches with the same pass seeds (the usual case:
the same spec, new code), batch i of one is batch i of the other, and the change of a row's retention gets
a paired interval (:func:`gradflow.stats.paired_difference_interval`, from the per-batch norms in the
records' passes). Otherwise the two rows are independent estimates and their own intervals are combined
(:func:`gradflow.stats.mover_difference`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .record import RunRecord
from .stats import mover_difference, paired_difference_interval
from .verdicts import finite

IntervalFn = Callable[[dict[str, Any], dict[str, Any]], "tuple[float, float] | None"]


def paired(old: RunRecord, new: RunRecord) -> bool:
    """Whether the two records measured the same batches with the same seeds (rows can be paired by batch)."""
    a, b = old.data, new.data
    return (a["subject"].get("name") == b["subject"].get("name")
            and a["subject"].get("preset") == b["subject"].get("preset")
            and a["batches"]["count"] == b["batches"]["count"] >= 2
            and a["batches"]["pass_seeds"] == b["batches"]["pass_seeds"])


def _ci(row: dict[str, Any]) -> tuple[float, float] | None:
    low, high = finite(row.get("ci_low")), row.get("ci_high")
    high = high if isinstance(high, int | float) and not isinstance(high, bool) else None
    return None if low is None or high is None else (low, float(high))


def unpaired_interval(old_row: dict[str, Any], new_row: dict[str, Any]) -> tuple[float, float] | None:
    """Interval of ``new - old`` retention from the two rows' own intervals (independent estimates)."""
    old, new = finite(old_row.get("retention")), finite(new_row.get("retention"))
    old_ci, new_ci = _ci(old_row), _ci(new_row)
    if old is None or new is None or old_ci is None or new_ci is None:
        return None
    return mover_difference(new, new_ci, old, old_ci)


def change_intervals(old: RunRecord, new: RunRecord) -> tuple[IntervalFn, str]:
    """The function giving each row's change interval, and its kind (``"paired"`` or ``"unpaired"``)."""
    if not paired(old, new):
        return unpaired_interval, "unpaired"
    confidence = float(new.data.get("confidence", 0.95))

    def interval(old_row: dict[str, Any], new_row: dict[str, Any]) -> tuple[float, float] | None:
        old_samples, new_samples = old.samples(old_row), new.samples(new_row)
        if old_samples is None or new_samples is None:
            return unpaired_interval(old_row, new_row)
        return paired_difference_interval(*new_samples, *old_samples, confidence=confidence)

    return interval, "paired"
