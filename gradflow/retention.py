"""Retention rows: per (branch, target, module), the ratio of mean gradient norms and its interval.

A row's ``status`` says what the passes found (:class:`gradflow.verdicts.RowStatus`): ``ok``; ``no_grad``
(the target's modules ran but no gradient reached them, with the reason when it is known); ``not_run``
(they never ran); ``non_finite``; ``undefined`` (zero gradient without the branch); ``no_effect`` (identical
norms with and without the branch, every ablated module having run).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .passes import TargetLayout
from .stats import ratio_interval, ratio_of_means

REENTRANT_HINT = (" With use_reentrant=True checkpointing, a region none of whose inputs requires grad gives its "
                  "parameters no gradient at all (torch warns 'None of the inputs have requires_grad=True'): use "
                  "use_reentrant=False, or make an input of the region require grad.")
NO_GRAD_HINT = (" Their forward ran only with gradient recording off (under torch.no_grad(), or inside a "
                "use_reentrant=True checkpoint none of whose inputs requires grad, which then gives the parameters "
                "inside no gradient: use use_reentrant=False, or make an input of the region require grad).")


def _status(with_values: list, without_values: list, with_ran: list[str], without_ran: list[str],
            reentrant: bool = False) -> tuple[str, str]:
    for values, ran, side in ((with_values, with_ran, "with the branch"),
                              (without_values, without_ran, "with the branch ablated")):
        idle = sum(1 for v, r in zip(values, ran, strict=True) if v is None and r == "no")
        if idle:
            return "not_run", (f"the target's modules never ran in the forward pass {side} ({idle} of {len(values)} "
                               "batches): the loss does not use them, so there is no gradient to measure")
    if any(v is None for v in with_values) or any(v is None for v in without_values):
        side = "with the branch" if any(v is None for v in with_values) else "with the branch ablated"
        grad_off = any(v is None and r == "no_grad" for v, r in zip(with_values + without_values,
                                                                   with_ran + without_ran, strict=True))
        hint = NO_GRAD_HINT if grad_off else (REENTRANT_HINT if reentrant else "")
        return "no_grad", (f"the target's modules ran but received no gradient {side} in at least one batch "
                           "(their output does not reach the loss, or it is detached)." + hint)
    values = np.array(with_values + without_values, dtype=float)
    if not np.all(np.isfinite(values)):
        return "non_finite", "NaN or Inf gradient norms"
    if float(np.mean(without_values)) == 0.0:
        return "undefined", "the gradient without the branch is exactly zero, so the ratio is undefined"
    if with_values == without_values:
        return "no_effect", "identical norms with and without the branch: it is not on this target's gradient path"
    return "ok", ""


def retention_rows(
    layout: TargetLayout,
    passes: list[dict[str, Any]],
    comparisons: Sequence[tuple[str, str, str, float | None]],
    n_batches: int,
    confidence: float = 0.95,
    reentrant: bool = False,
) -> list[dict[str, Any]]:
    """One row per (comparison, target, module) over the first ``n_batches`` batches.

    ``comparisons`` holds ``(branch, numerator setting, denominator setting, scale)``; retention = mean
    numerator norm / mean denominator norm, with the interval of :func:`gradflow.stats.ratio_interval` at
    ``confidence``. ``reentrant``: the passes went through reentrant checkpointing (explains missing
    gradients).
    """
    by_setting: dict[str, list[dict]] = {}
    for entry in passes:
        if entry["batch"] < n_batches:
            by_setting.setdefault(entry["setting"], []).append(entry)
    rows = []
    for branch, numerator, denominator, scale in comparisons:
        for target, target_rows in layout.rows.items():
            for module in target_rows:
                with_values = [p["norms"][target][module] for p in by_setting[numerator]]
                without_values = [p["norms"][target][module] for p in by_setting[denominator]]
                with_ran = [p["ran"][target][module] for p in by_setting[numerator]]
                without_ran = [p["ran"][target][module] for p in by_setting[denominator]]
                status, note = _status(with_values, without_values, with_ran, without_ran, reentrant)
                if scale == 0 and status == "no_effect":
                    note = "scale 0 switches the branch off: the reference pass itself, retention 1 by construction"
                row: dict[str, Any] = {
                    "branch": branch, "target": target, "module": module, "scale": scale,
                    "numerator": numerator, "denominator": denominator,
                    "norm_with": None, "norm_without": None, "retention": None,
                    "ci_low": None, "ci_high": None, "n_batches": n_batches,
                    "per_batch": [None] * n_batches, "status": status, "note": note,
                }
                if status not in ("no_grad", "not_run"):
                    num = np.array(with_values, dtype=float)
                    den = np.array(without_values, dtype=float)
                    row["norm_with"] = float(np.mean(num))
                    row["norm_without"] = float(np.mean(den))
                    with np.errstate(divide="ignore", invalid="ignore"):
                        row["per_batch"] = [float(v) for v in num / den]
                    if status in ("ok", "no_effect"):
                        row["retention"] = ratio_of_means(num, den)
                        interval = ratio_interval(num, den, confidence)
                        if interval is not None:
                            row["ci_low"], row["ci_high"] = interval
                rows.append(row)
    return rows


def scale_insensitive(rows: Sequence[dict[str, Any]], branch: str) -> list[str]:
    """Warnings for whole targets whose retention is the same at every non-zero scale of a sweep.

    Scaling a module's output does nothing when the model renormalises it downstream (e.g. a branch whose
    output is norm-matched to the hidden state after the hooked module): the sweep then measures nothing.
    """
    warnings = []
    by_target: dict[str, list[float]] = {}
    for row in rows:
        if row["module"] == "*" and row["scale"] and row["status"] == "ok" and row["retention"] is not None:
            by_target.setdefault(row["target"], []).append(row["retention"])
    for target, values in by_target.items():
        spread = max(values) - min(values) if values else 0.0
        matters = any(abs(v - 1.0) >= 1e-4 for v in values)  # the branch changes the gradient, its scale does not
        if len(values) >= 2 and matters and spread <= 1e-5 * abs(max(values)):
            warnings.append(
                f"retention of {target} is {values[0]:.4g} at every non-zero scale of {branch}: scaling the hooked "
                "module's output changed nothing, so the model probably renormalises it downstream (a norm-matched "
                "branch). Hook the module after the renormalisation, or scale the branch's own weight instead.")
    return warnings
