"""Walk the tensors inside a module's output (tensor, tuple, list, dict, namedtuple, dataclass-free).

Thin wrappers over torch's pytree utilities so the rest of gradflow states intent, not mechanics.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, MutableMapping
from typing import Any

import torch
from torch.utils import _pytree as pytree  # torch's own nested-structure walker (used by torch.compile)


def tensors_in(obj: Any) -> list[torch.Tensor]:
    """All tensors inside ``obj``, in a stable order."""
    if isinstance(obj, torch.Tensor):  # the common case, without the tree walk (a tensor is a leaf to pytree)
        return [obj]
    return [leaf for leaf in pytree.tree_leaves(obj) if isinstance(leaf, torch.Tensor)]


def _hides_gradient(leaf: Any) -> bool:
    """Whether an object pytree treats as opaque holds, in its attributes or items, a tensor that records
    gradients (a dataclass of activations; a cache of constant tensors does not count)."""
    if isinstance(leaf, torch.Tensor):
        return False
    values = list(vars(leaf).values()) if hasattr(leaf, "__dict__") else []
    if isinstance(leaf, Mapping):
        values += list(leaf.values())
    return any(isinstance(inner, torch.Tensor) and inner.requires_grad for inner in pytree.tree_leaves(values))


def tensors_and_opaque(obj: Any) -> tuple[list[torch.Tensor], bool]:
    """The tensors inside ``obj``, and whether it also holds an object pytree cannot see into (a dataclass,
    say) with gradient-recording tensors inside, whose gradients would then go unseen."""
    if isinstance(obj, torch.Tensor):
        return [obj], False
    leaves = pytree.tree_leaves(obj)
    return [leaf for leaf in leaves if isinstance(leaf, torch.Tensor)], any(_hides_gradient(leaf) for leaf in leaves)


def map_tensors(obj: Any, fn: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    """``obj`` with every tensor ``t`` replaced by ``fn(t)``; other leaves unchanged."""
    return pytree.tree_map(lambda leaf: fn(leaf) if isinstance(leaf, torch.Tensor) else leaf, obj)


def fresh_containers(obj: Any) -> Any:
    """``obj`` with new lists, tuples and dicts around the same tensors: a loss function that pops a key or
    appends to a list then leaves the next pass's batch as it was."""
    copied = pytree.tree_map(lambda leaf: leaf, obj)
    if copied is obj and isinstance(obj, MutableMapping | list):  # a container pytree does not know
        copied = copy.copy(obj)
    return copied


def all_tensors(obj: Any) -> list[torch.Tensor]:
    """Every tensor in ``obj``, also inside mappings pytree does not know (a tokenizer's ``BatchEncoding``)."""
    found: list[torch.Tensor] = []
    for leaf in pytree.tree_leaves(obj):
        if isinstance(leaf, torch.Tensor):
            found.append(leaf)
        elif isinstance(leaf, Mapping):
            found += all_tensors(list(leaf.values()))
    return found

