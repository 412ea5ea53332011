"""Statistics over batches: ratio of means and its bootstrap confidence interval."""

from __future__ import annotations

import math

import numpy as np


def ratio_of_means(numerator: np.ndarray, denominator: np.ndarray) -> float:
    """``mean(numerator) / mean(denominator)``; NaN when the denominator's mean is 0 or not finite."""
    den = float(np.mean(denominator))
    if den == 0.0 or not math.isfinite(den):
        return math.nan
    return float(np.mean(numerator)) / den


def bootstrap_indices(n_items: int, n_resamples: int, seed: int) -> np.ndarray:
    """``(n_resamples, n_items)`` indices drawn with replacement from a generator seeded by ``seed``.

    Shared by every row of one run so that rows are resampled consistently (paired by batch).
    """
    rng = np.random.default_rng(seed)
    return rng.integers(0, n_items, size=(n_resamples, n_items))


def bootstrap_ratio_ci(
    numerator: np.ndarray, denominator: np.ndarray, indices: np.ndarray, confidence: float = 0.95
) -> tuple[float, float] | None:
    """Percentile bootstrap interval of the ratio of means, resampling batches as pairs.

    Returns ``None`` when there are fewer than two batches (no spread to estimate) or when the
    resampled ratios are not finite.
    """
    if len(numerator) < 2:
        return None
    num = numerator[indices].mean(axis=1)
    den = denominator[indices].mean(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = num / den
    if not np.all(np.isfinite(ratios)):
        return None
    tail = (1.0 - confidence) / 2.0 * 100.0
    low, high = np.percentile(ratios, [tail, 100.0 - tail])
    return float(low), float(high)


def mover_difference(new: float, new_ci: tuple[float, float], old: float, old_ci: tuple[float, float]
                     ) -> tuple[float, float]:
    """Confidence interval of ``new - old`` for two independent estimates from their own intervals (MOVER).

    Zou & Donner's method of variance estimates recovery: the lower limit combines how far each interval
    reaches below (new) and above (old) its estimate, and the other way round for the upper limit; it keeps
    the asymmetry of ratio intervals that a symmetric normal approximation would lose.
    """
    delta = new - old
    lower = delta - math.sqrt((new - new_ci[0]) ** 2 + (old_ci[1] - old) ** 2)
    upper = delta + math.sqrt((new_ci[1] - new) ** 2 + (old - old_ci[0]) ** 2)
    return lower, upper
