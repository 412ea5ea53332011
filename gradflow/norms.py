"""Gradient norms: computed in float64, grouped by device, read back with one transfer per device.

Like ``torch.nn.utils.clip_grad_norm_``, tensors are grouped by ``(device, dtype)`` for one fused
``torch._foreach_norm`` call per group; the 0-d results stay on their devices until :func:`to_floats`
stacks them per device and moves each stack to the CPU, so a model split across devices (pipeline stages,
``device_map="auto"``) never stacks tensors of different devices. Norms accumulate in float64: a float32
sum over a million squares reads several parts in 1e5 low, more than the four digits we print.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence

import torch


def _local(tensor: torch.Tensor) -> torch.Tensor:
    """The local part of a DTensor (a sharded parameter's gradient under FSDP2); other tensors as they are."""
    to_local = getattr(tensor, "to_local", None)
    return to_local() if callable(to_local) else tensor


#: Elements per row of the fast path: small enough that float32 accumulation inside a row stays near float32
#: rounding (measured worst 1e-7 relative), large enough to stay cheap.
PIECE = 1 << 12


def _pieces_norms(tensors: list[torch.Tensor]) -> torch.Tensor:
    """Norms of ``tensors`` (float64, one vector): norms of 4K-element pieces, combined in float64.

    A tensor's whole 4K rows take one row-wise float32 norm kernel (the tensor viewed as a matrix); every piece
    of at most 4K elements (small tensors, remainders) goes into one fused float64 ``_foreach_norm``. About as
    fast as a float32 ``_foreach_norm`` of the whole tensors on CPU, and within 2e-7 of a float64 norm (a few
    float32 roundings; a plain float32 norm of 1e7 elements is off by 5e-4).
    """
    device = tensors[0].device
    parts: list[torch.Tensor] = []
    owners: list[int] = []
    small: list[torch.Tensor] = []
    small_owners: list[int] = []
    for index, tensor in enumerate(tensors):
        flat = tensor.reshape(-1)
        whole = flat.numel() - flat.numel() % PIECE
        if whole:
            parts.append(torch.linalg.vector_norm(flat[:whole].view(-1, PIECE), dim=1, dtype=torch.float32))
            owners += [index] * (whole // PIECE)
        if whole < flat.numel():
            small.append(flat[whole:])
            small_owners.append(index)
    if small:
        parts.append(torch.stack(torch._foreach_norm(small, 2, dtype=torch.float64)))  # small: exact is cheap
        owners += small_owners
    out = torch.zeros(len(tensors), dtype=torch.float64, device=device)
    if parts:
        squares = torch.cat(parts).to(torch.float64).square()
        out.index_add_(0, torch.tensor(owners, device=device), squares)
    return out.sqrt()


def vector_norms(tensors: Sequence[torch.Tensor], exact: bool = True) -> list[torch.Tensor]:
    """The L2 norm of each tensor as a float64 0-d tensor on the tensor's own device.

    ``exact``: accumulate every element in float64 (``compare``: a few target tensors). ``exact=False`` (the
    probe, per-step logging: every module's gradients each step) sums 4K-element pieces in float32 and the
    pieces in float64 — within 2e-7 of the float64 norm at about a float32 norm's cost; float64 inputs are exact
    either way. DTensors contribute their local shard (combine shards across ranks with
    :mod:`gradflow.distributed`).
    """
    out: list[torch.Tensor | None] = [None] * len(tensors)
    groups: dict[tuple[torch.device, torch.dtype], list[int]] = defaultdict(list)
    local = [_local(t.detach()) for t in tensors]
    for index, tensor in enumerate(local):
        groups[(tensor.device, tensor.dtype)].append(index)
    for (_, dtype), indices in groups.items():
        members = [local[i] for i in indices]
        if exact or dtype == torch.float64:
            norms = list(torch._foreach_norm(members, 2, dtype=torch.float64))
        else:
            norms = list(_pieces_norms(members).unbind())
        for i, norm in zip(indices, norms, strict=True):
            out[i] = norm
    return out  # type: ignore[return-value]


def to_floats(scalars: Sequence[torch.Tensor]) -> list[float]:
    """Read 0-d tensors back as Python floats: one stack and one host transfer per device."""
    if not scalars:
        return []
    values: list[float] = [math.nan] * len(scalars)
    by_device: dict[torch.device, list[int]] = defaultdict(list)
    for index, scalar in enumerate(scalars):
        by_device[scalar.device].append(index)
    for indices in by_device.values():
        stacked = torch.stack([scalars[i].detach().reshape(()).to(torch.float64) for i in indices])
        for i, value in zip(indices, stacked.cpu().tolist(), strict=True):
            values[i] = value
    return values


def combine_norms(norms: Iterable[float | None]) -> float | None:
    """L2 norm of a group from its members' L2 norms; ``None`` when no member received a gradient."""
    present = [n for n in norms if n is not None]
    if not present:
        return None
    return math.sqrt(math.fsum(n * n for n in present))
