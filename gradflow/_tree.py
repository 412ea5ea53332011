"""Walk the tensors inside a module's output (tensor, tuple, list, dict, namedtuple, dataclass-free).

Thin wrappers over torch's pytree utilities so the rest of gradflow states intent, not mechanics.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.utils import _pytree as pytree  # torch's own nested-structure walker (used by torch.compile)


def tensors_in(obj: Any) -> list[torch.Tensor]:
    """All tensors inside ``obj``, in a stable order."""
    if isinstance(obj, torch.Tensor):  # the common case, without the tree walk (a tensor is a leaf to pytree)
        return [obj]
    return [leaf for leaf in pytree.tree_leaves(obj) if isinstance(leaf, torch.Tensor)]


def map_tensors(obj: Any, fn: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    """``obj`` with every tensor ``t`` replaced by ``fn(t)``; other leaves unchanged."""
    return pytree.tree_map(lambda leaf: fn(leaf) if isinstance(leaf, torch.Tensor) else leaf, obj)
