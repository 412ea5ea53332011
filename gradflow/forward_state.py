"""The state a forward pass changes besides parameters: buffers and the modules' own random generators.

BatchNorm running statistics, a spectral norm's power-iteration vectors and a module's private
``torch.Generator`` all move with every forward in training mode. Two passes of one batch (with and without
a branch) must start from the same state, or they differ by more than the branch; and a measurement must leave
the model as it found it. :class:`ForwardState` snapshots them once and puts them back before every pass and at
the end.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import nn
from torch.nn.parameter import is_lazy
from torch.utils import _pytree as pytree


def _generators_in(values: list[Any]) -> list[torch.Generator]:
    """Generators among ``values``: held directly, in lists, tuples or dicts, or as an attribute of a plain
    helper object (one level)."""
    found = []
    for leaf in pytree.tree_leaves(values):
        if isinstance(leaf, torch.Generator):
            found.append(leaf)
        elif hasattr(leaf, "__dict__") and not isinstance(leaf, nn.Module | torch.Tensor | type):
            found += [v for v in pytree.tree_leaves(list(vars(leaf).values())) if isinstance(v, torch.Generator)]
    return found


class ForwardState:
    """Buffers and module-held generators of ``model``, put back by :meth:`reset` (a context manager: the
    snapshot is restored on exit, also after an error)."""

    def __init__(self, model: nn.Module) -> None:
        # (module, name, tensor, copy); None for a buffer registered empty (a cache the forward fills)
        self._buffers: list[tuple[nn.Module, str, torch.Tensor | None, torch.Tensor | None]] = []
        for module in model.modules():
            for name, buffer in module._buffers.items():
                if buffer is None:
                    self._buffers.append((module, name, None, None))
                elif not is_lazy(buffer):  # a lazy module's buffer is not there yet
                    self._buffers.append((module, name, buffer, buffer.detach().clone()))
        seen: dict[int, tuple[torch.Generator, torch.Tensor]] = {}
        for module in model.modules():
            for generator in _generators_in(list(vars(module).values())):
                seen.setdefault(id(generator), (generator, generator.get_state()))
        self._generators = list(seen.values())

    def __enter__(self) -> ForwardState:
        return self

    def __exit__(self, *exc: object) -> None:
        self.reset()

    def reset(self, seed: int | None = None) -> None:
        """Buffers back to the snapshot (re-registered if a module replaced one); module generators seeded
        with ``seed`` (the pass seed: every setting of a batch draws the same numbers) or, without one, back
        to their saved state."""
        with torch.no_grad():
            for module, name, buffer, copy in self._buffers:
                if module._buffers.get(name) is not buffer:
                    module._buffers[name] = buffer
                if buffer is not None and copy is not None:
                    # always copied: BatchNorm updates its running statistics without a version bump; an expanded
                    # (self-overlapping) buffer refuses the copy, and no forward could have written it in place
                    with contextlib.suppress(RuntimeError):
                        buffer.copy_(copy)
        for generator, state in self._generators:
            if seed is None:
                generator.set_state(state)
            else:
                generator.manual_seed(seed)
