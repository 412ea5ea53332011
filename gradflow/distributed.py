"""Global numbers under torch.distributed: what every rank reports is the same, and what the optimizer sees.

* **DDP**: each rank computes its local gradient of the targets; one ``all_reduce`` (sum) of the flattened
  float64 gradients, divided by the world size, gives the averaged gradient DDP hands to the optimizer.
  Cost per pass: one all-reduce of (2 x number of target tensors + number of target parameters + 1) float64
  values.
* **FSDP2**: after backward each rank holds its shard of the reduce-scattered (already averaged) gradient;
  the squared norms of the shards are summed over the ranks that hold the shards (one ``all_reduce`` of one
  value per target tensor per mesh dimension sharded over; replicas of HSDP are not counted twice), plus one
  ``all_reduce`` of (number of target tensors + 1) values for the loss and which tensors got a gradient.

In both, a parameter counts as having a gradient when any rank has one (a rank without one adds zeros), and
the loss is averaged over ranks. Every rank must call the measuring function: it communicates.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from .errors import SubjectError
from .norms import dense_real, to_floats, vector_norms
from .runtime import Runtime


def _dense_entries(tensor: torch.Tensor) -> torch.Tensor:
    """Every entry of ``tensor`` in place, flat and real: what an element-wise all-reduce needs (a sparse
    gradient's stored values differ in number and position from rank to rank)."""
    if tensor.layout != torch.strided:
        tensor = tensor.to_dense()
    return (torch.view_as_real(tensor) if tensor.is_complex() else tensor).reshape(-1)


def _device(params: Sequence[torch.Tensor]) -> torch.device:
    if torch.distributed.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return dense_real(params[0].detach()).device if params else torch.device("cpu")


def _shard_groups(tensor: torch.Tensor) -> tuple[Any, ...]:
    """Process groups of the mesh dimensions a DTensor is sharded over (the ones its norm sums across)."""
    mesh = tensor.device_mesh  # type: ignore[attr-defined]
    return tuple(mesh.get_group(dim) for dim, placement in enumerate(tensor.placements)  # type: ignore[attr-defined]
                 if placement.is_shard())


def _sum_over_shards(squares: list[torch.Tensor], params: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Local squared norms of sharded tensors, each summed over the ranks that hold its shards."""
    by_groups: dict[tuple[int, ...], tuple[tuple[Any, ...], list[int]]] = {}
    for index, param in enumerate(params):
        if not hasattr(param, "device_mesh"):
            raise SubjectError(
                "a target parameter is not managed by FSDP2 (a plain tensor in an FSDP2 model): each rank would "
                "hold a different, unreduced gradient for it. Apply fully_shard to the root module as well, so "
                "that every trainable parameter is sharded."
            )
        groups = _shard_groups(param)
        by_groups.setdefault(tuple(id(g) for g in groups), (groups, []))[1].append(index)
    dist = torch.distributed
    out = list(squares)
    for groups, indices in by_groups.values():
        stacked = torch.stack([squares[i] for i in indices])
        for group in groups:
            dist.all_reduce(stacked, op=dist.ReduceOp.SUM, group=group)
        for i, value in zip(indices, stacked.unbind(), strict=True):
            out[i] = value
    return out


def sharded_norms(local_norms: Sequence[torch.Tensor | None], params: Sequence[torch.Tensor]) -> list[float | None]:
    """Global norms of sharded gradients from each rank's shard norms (``None``: no rank has a gradient)."""
    dist = torch.distributed
    device = _device(params)
    presence = torch.tensor([0.0 if n is None else 1.0 for n in local_norms], dtype=torch.float64, device=device)
    dist.all_reduce(presence, op=dist.ReduceOp.SUM)
    squares = [torch.zeros((), dtype=torch.float64, device=device) if n is None
               else n.to(device=device, dtype=torch.float64).pow(2) for n in local_norms]
    norms = [s.clamp_min(0).sqrt() for s in _sum_over_shards(squares, params)] if squares else []
    floats = to_floats([*presence.unbind(), *norms])
    n = len(local_norms)
    return [value if seen > 0 else None for value, seen in zip(floats[n:], floats[:n], strict=True)]


def global_output_square_sums(squares: list[torch.Tensor], present: list[bool], runtime: Runtime
                              ) -> tuple[list[torch.Tensor], list[bool]]:
    """Squared norms of output gradients of the global batch from each rank's local ones.

    The global loss is the mean of the ranks' losses, so each rank's output gradient counts 1/world_size.
    """
    dist = torch.distributed
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" \
        else torch.device("cpu")
    payload = torch.stack([*(s.to(device=device, dtype=torch.float64) for s in squares),
                           *(torch.tensor(float(p), dtype=torch.float64, device=device) for p in present)]) \
        if squares else torch.zeros(0, dtype=torch.float64, device=device)
    dist.all_reduce(payload, op=dist.ReduceOp.SUM)
    n = len(squares)
    scaled = list((payload[:n] / runtime.world_size**2).unbind())
    return scaled, [bool(v > 0) for v in payload[n:].tolist()]


def reduce_pass(
    runtime: Runtime, loss: torch.Tensor, grads: Sequence[torch.Tensor | None], params: Sequence[torch.Tensor]
) -> tuple[float, list[float | None]]:
    """``(loss, per-parameter gradient norms)`` of one pass, combined across ranks as ``runtime`` says.

    ``grads[i]`` is the gradient of ``params[i]`` on this rank (``None``: none flowed here).
    """
    loss = loss.detach().reshape(()).to(torch.float64)
    if runtime.scope == "local":
        present = [g for g in grads if g is not None]
        values = iter(to_floats([loss, *vector_norms(present)]))
        loss_value = next(values)
        return loss_value, [None if g is None else next(values) for g in grads]
    dist = torch.distributed
    device = _device(params)
    presence = torch.tensor([0.0 if g is None else 1.0 for g in grads], dtype=torch.float64, device=device)
    head = torch.cat([presence, loss.to(device).reshape(1)])
    n = len(grads)
    if runtime.scope == "ddp":
        flat = [torch.zeros(p.numel() * (2 if p.is_complex() else 1), dtype=torch.float64, device=device)
                if g is None else _dense_entries(g.detach()).to(device=device, dtype=torch.float64)
                for g, p in zip(grads, params, strict=True)]
        payload = torch.cat([head, *flat])
        dist.all_reduce(payload, op=dist.ReduceOp.SUM)
        averaged = payload[n + 1:] / runtime.world_size
        norms = vector_norms(list(torch.split(averaged, [t.numel() for t in flat]))) if flat else []
    else:
        dist.all_reduce(head, op=dist.ReduceOp.SUM)
        payload = head
        squares = [torch.zeros((), dtype=torch.float64, device=device) if g is None
                   else torch.linalg.vector_norm(dense_real(g.detach()), dtype=torch.float64).to(device).pow(2)
                   for g in grads]
        norms = [s.clamp_min(0).sqrt() for s in _sum_over_shards(squares, params)] if squares else []
    floats = to_floats([payload[n], *payload[:n].unbind(), *norms])
    loss_value, present, values = floats[0] / runtime.world_size, floats[1:1 + n], floats[1 + n:]
    return loss_value, [value if seen > 0 else None for value, seen in zip(values, present, strict=True)]
