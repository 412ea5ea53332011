"""Independent reference numbers for the real-library tests: plain torch, no gradflow machinery.

``reference_norms`` replays each batch from the pass seed gradflow recorded, switches the branch off with
the library's own mechanism (a peft scale, a diffusers attention processor, the user's adapter switch), and
takes the gradient with ``torch.autograd.grad`` -- or, where that cannot see it (reentrant checkpointing),
with ``.backward()`` on freshly cleared ``.grad`` fields.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch


def grad_norm(loss: torch.Tensor, params: Sequence[torch.Tensor], via_backward: bool = False) -> float | None:
    """L2 norm (float64) over the gradients of ``params``; None when none reaches them."""
    if via_backward:
        for p in params:
            p.grad = None
        loss.backward()
        grads = [p.grad for p in params]
        for p in params:
            p.grad = None
    else:
        grads = list(torch.autograd.grad(loss, list(params), allow_unused=True))
    present = [g for g in grads if g is not None]
    if not present:
        return None
    return math.sqrt(math.fsum(float(g.detach().double().pow(2).sum()) for g in present))


def reference_norms(
    model: torch.nn.Module,
    loss_fn: Callable[[torch.nn.Module, Any], torch.Tensor],
    batches: Sequence[Any],
    seeds: Sequence[int],
    params: Sequence[torch.Tensor],
    switch_off: Callable[[], contextlib.AbstractContextManager],
    via_backward: bool = False,
) -> tuple[list[float | None], list[float | None]]:
    """Per-batch norms with the branch on, and with it switched off by ``switch_off()``."""
    with_, without = [], []
    for batch, seed in zip(batches, seeds, strict=True):
        torch.manual_seed(seed)
        with_.append(grad_norm(loss_fn(model, batch), params, via_backward))
        with switch_off():
            torch.manual_seed(seed)
            without.append(grad_norm(loss_fn(model, batch), params, via_backward))
    model.zero_grad(set_to_none=True)
    return with_, without


def rel_err(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-300)


def assert_row_matches(record: Any, branch: str, target: str, with_: list, without: list, tol: float,
                       module: str = "*") -> None:
    """The record's row equals the reference: mean norms, retention, and every per-batch ratio."""
    row = next(r for r in record.rows if (r["branch"], r["target"], r["module"]) == (branch, target, module))
    assert row["status"] == "ok", (row["status"], row["note"])
    mean_with, mean_without = sum(with_) / len(with_), sum(without) / len(without)
    assert rel_err(row["norm_with"], mean_with) <= tol, (row["norm_with"], mean_with)
    assert rel_err(row["norm_without"], mean_without) <= tol, (row["norm_without"], mean_without)
    assert rel_err(row["retention"], mean_with / mean_without) <= tol
    for got, w, wo in zip(row["per_batch"], with_, without, strict=True):
        assert rel_err(got, w / wo) <= tol
