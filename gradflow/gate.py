"""Gates: a retention band and the verdict of a retention row against it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from .errors import GradflowError

GateMode = Literal["point", "ci"]


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
