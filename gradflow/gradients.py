"""The gradient of a loss with respect to the targets' parameters, read the way autograd can give it.

Two paths, chosen per pass by looking at the autograd graph before it runs:

``autograd`` (default)
    ``torch.autograd.grad(loss, params)``: only what the targets need is computed, and nobody's ``.grad``
    is touched.
``backward``
    ``loss.backward()`` with every ``.grad`` it can write saved beforehand and restored exactly afterwards
    (the same tensor objects), and post-accumulate-grad hooks suspended meanwhile (an optimizer-in-backward
    hook must not step). Needed when ``autograd.grad`` cannot see the gradient:

    * reentrant activation checkpointing (``use_reentrant=True``): the checkpointed region's parameters are
      not in the outer graph; its backward runs a nested ``backward`` that only ``.backward()`` supports;
    * a custom autograd Function sits on the graph and some target parameter is not reachable through it
      (it may compute that gradient inside its own backward);
    * FSDP2: forward runs on unsharded copies, and the sharded gradient exists only after FSDP2's
      post-backward reduce-scatter.
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

GradientPath = Literal["autograd", "backward"]


@dataclass
class GraphFacts:
    """What a walk of the autograd graph from the loss found."""

    leaves: set[int] = field(default_factory=set)  # ids of leaf tensors with an AccumulateGrad node
    leaf_tensors: list[torch.Tensor] = field(default_factory=list)
    reentrant_checkpoint: bool = False
    custom_functions: list[str] = field(default_factory=list)


def inspect_graph(loss: torch.Tensor) -> GraphFacts:
    """Walk the autograd graph of ``loss`` (read-only) for its leaves and opaque nodes."""
    facts = GraphFacts()
    root = loss.grad_fn
    if root is None:
        return facts
    seen: set[int] = set()
    stack = [root]
    custom: dict[str, None] = {}
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        variable = getattr(node, "variable", None)
        if isinstance(variable, torch.Tensor):
            facts.leaves.add(id(variable))
            facts.leaf_tensors.append(variable)
        if isinstance(node, torch.autograd.function.BackwardCFunction):
            name = type(node).__name__
            if "CheckpointFunction" in name:
                facts.reentrant_checkpoint = True
            custom[name] = None
        stack.extend(nxt for nxt, _ in node.next_functions if nxt is not None)
    facts.custom_functions = list(custom)
    return facts


def choose_path(loss: torch.Tensor, params: Sequence[torch.Tensor], sharded: bool) -> tuple[GradientPath, str]:
    """The path that gives the true gradient of ``params``, and why (empty for the default path)."""
    if sharded:
        return "backward", ("FSDP2 shards the parameters: gradients are read from .grad after FSDP2's "
                            "reduce-scatter in a real backward")
    facts = inspect_graph(loss)
    if facts.reentrant_checkpoint:
        return "backward", ("reentrant activation checkpointing (use_reentrant=True) hides the checkpointed "
                            "parameters from torch.autograd.grad; measured through .backward() with every .grad "
                            "saved and restored")
    unreachable = [p for p in params if id(p) not in facts.leaves]
    if unreachable and facts.custom_functions:
        return "backward", (f"custom autograd Function(s) {', '.join(facts.custom_functions[:3])} on the graph and "
                            f"{len(unreachable)} target parameter(s) not reachable around them; measured through "
                            ".backward() with every .grad saved and restored")
    return "autograd", ""


def _unique(tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    seen: set[int] = set()
    out = []
    for tensor in tensors:
        if id(tensor) not in seen:
            seen.add(id(tensor))
            out.append(tensor)
    return out


@contextlib.contextmanager
def _grads_set_aside(tensors: Sequence[torch.Tensor]) -> Iterator[None]:
    """``.grad`` of ``tensors`` set to None inside (the originals come back on exit, also on errors), and
    their post-accumulate-grad hooks suspended."""
    saved = [(t, t.grad, getattr(t, "_post_accumulate_grad_hooks", None)) for t in tensors]
    try:
        for tensor, _, hooks in saved:
            tensor.grad = None
            if hooks:
                # An empty dict, not None: torch keeps calling hooks it already knows of when set to None.
                tensor._post_accumulate_grad_hooks = OrderedDict()
        yield
    finally:
        for tensor, grad, hooks in saved:
            tensor.grad = grad
            if hooks:
                tensor._post_accumulate_grad_hooks = hooks


def gradients(
    loss: torch.Tensor, params: Sequence[torch.Tensor], path: GradientPath, model: nn.Module | None = None
) -> list[torch.Tensor | None]:
    """The gradient of ``loss`` with respect to each of ``params`` (``None`` where none flows).

    ``path="backward"`` writes to ``.grad`` of every leaf of the graph and every trainable parameter of
    ``model`` only inside a save/restore, so callers see no change.
    """
    if path == "autograd":
        return list(torch.autograd.grad(loss, list(params), allow_unused=True))
    leaves = inspect_graph(loss).leaf_tensors
    model_params = [p for p in model.parameters() if p.requires_grad] if model is not None else []
    touched = _unique([*params, *model_params, *leaves])
    with _grads_set_aside(touched):
        loss.backward()
        return [None if p.grad is None else p.grad.detach() for p in params]
