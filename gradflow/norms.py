"""Gradient norms: computed in float64, grouped by device, read back with one transfer per device.

Like ``torch.nn.utils.clip_grad_norm_``, tensors are grouped by ``(device, dtype)`` for one fused
``torch._foreach_norm`` call per group; the 0-d results stay on their devices until :func:`to_floats`
stacks them per device and moves each stack to the CPU, so a model split across devices (pipeline stages,
``device_map="auto"``) never stacks tensors of different devices. Norms accumulate in float64: a float32
sum over a million squares reads several parts in 1e5 low, more than the four digits we print.
"""

from __future__ import annotations

import functools
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence

import torch


def dense_real(tensor: torch.Tensor) -> torch.Tensor:
    """A dense real tensor with the norm of ``tensor``: the local part of a DTensor (a sharded parameter's
    gradient under FSDP2), the stored values of a sparse one (``nn.Embedding(sparse=True)``; COO coalesced
    first, so repeated indices are summed), a complex one viewed as its real and imaginary parts."""
    to_local = getattr(tensor, "to_local", None)
    if callable(to_local):
        tensor = to_local()
    if tensor.layout == torch.sparse_coo:
        tensor = tensor.coalesce().values()
    elif tensor.layout != torch.strided:  # compressed sparse layouts store each entry once
        tensor = tensor.values()
    return torch.view_as_real(tensor) if tensor.is_complex() else tensor


#: Elements per piece of the fast path: small enough that float32 accumulation inside a piece stays near float32
#: rounding (measured worst 1e-7 relative), large enough to stay cheap.
PIECE = 1 << 12


@functools.lru_cache(maxsize=1024)
def _row_length(numel: int) -> int:
    """The longest row of at most ``PIECE`` elements that divides ``numel`` (0: none as long as ``PIECE / 8``)."""
    for length in range(PIECE, PIECE // 8 - 1, -1):
        if numel % length == 0:
            return length
    return 0


#: A float32 piece norm inside this range was summed without overflow (its square is far below 3.4e38) and
#: without losing precision to underflow (squares below 1.2e-38 add at most 5e-35, 5e-11 of its square).
SAFE_PIECE_RANGE = (1e-12, 1e17)


def piece_norms(tensor: torch.Tensor) -> torch.Tensor:
    """A float64 vector whose L2 norm is ``tensor``'s: the norms of its pieces of at most 4K elements.

    On the CPU a float32 tensor of more than 4K elements takes one row-wise float32 kernel for most shapes
    (viewed as rows of a length that divides it); a piece whose float32 norm falls outside
    :data:`SAFE_PIECE_RANGE` (exploding or vanishing values whose squares overflow or underflow float32, or
    an all-zero piece that might be underflow) is summed again in float64. Every other tensor is normed in
    float64 at once (a 1-element vector): small ones cost little, on accelerators float64 accumulation is as
    fast as memory, and half-precision values round float32 sums with a bias (measured 6e-7 low per 4K row).
    Computed right away, it lets a hook drop the gradient it was handed: holding every module's output
    gradient until the end of the backward pass costs more than norming them.
    """
    flat = dense_real(tensor.detach()).reshape(-1)
    numel = flat.numel()
    if numel <= PIECE or flat.dtype != torch.float32 or flat.device.type != "cpu":
        return torch.linalg.vector_norm(flat, dtype=torch.float64).reshape(1)
    length = _row_length(numel)
    whole = numel - numel % length if length else numel - numel % PIECE
    rows = flat[:whole].view(-1, length or PIECE)
    norms = torch.linalg.vector_norm(rows, dim=1)
    low, high = torch.aminmax(norms)
    if not (float(low) > SAFE_PIECE_RANGE[0] and float(high) < SAFE_PIECE_RANGE[1]):  # NaN fails too
        suspect = ~((norms > SAFE_PIECE_RANGE[0]) & (norms < SAFE_PIECE_RANGE[1]))
        norms = norms.double()
        norms[suspect] = torch.linalg.vector_norm(rows[suspect], dim=1, dtype=torch.float64)
    else:
        norms = norms.double()
    if whole == numel:
        return norms
    return torch.cat((norms, torch.linalg.vector_norm(flat[whole:], dtype=torch.float64).reshape(1)))


def _fast_norms(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """Float64 norms of float32 ``tensors`` on one device: small ones in one fused float64 call, the others
    from their :func:`piece_norms`, combined in one fused float64 call."""
    out: list[torch.Tensor | None] = [None] * len(tensors)
    small = [i for i, tensor in enumerate(tensors) if tensor.numel() <= PIECE]
    large = [i for i, tensor in enumerate(tensors) if tensor.numel() > PIECE]
    for indices, members in ((small, [tensors[i] for i in small]),
                             (large, [piece_norms(tensors[i]) for i in large])):
        if members:
            for i, norm in zip(indices, torch._foreach_norm(members, 2, dtype=torch.float64), strict=True):
                out[i] = norm
    return out  # type: ignore[return-value]


def vector_norms(tensors: Sequence[torch.Tensor], exact: bool = True) -> list[torch.Tensor]:
    """The L2 norm of each tensor as a float64 0-d tensor on the tensor's own device.

    ``exact``: accumulate every element in float64 (``compare``: a few target tensors). ``exact=False`` (the
    probe, per-step logging: every module's gradients each step) sums float32 tensors in pieces of at most 4K
    elements in float32 and the pieces in float64 (:func:`piece_norms`) — within 2e-7 of the float64 norm at
    about a float32 norm's cost; other dtypes are exact either way. DTensors contribute their local shard
    (combine shards across ranks with :mod:`gradflow.distributed`).
    """
    out: list[torch.Tensor | None] = [None] * len(tensors)
    groups: dict[tuple[torch.device, torch.dtype], list[int]] = defaultdict(list)
    local = [dense_real(t.detach()) for t in tensors]
    for index, tensor in enumerate(local):
        groups[(tensor.device, tensor.dtype)].append(index)
    for (_, dtype), indices in groups.items():
        members = [local[i] for i in indices]
        if exact or dtype != torch.float32:
            norms = list(torch._foreach_norm(members, 2, dtype=torch.float64))
        else:
            norms = _fast_norms(members)
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
