"""Probe: hooks on selected modules that record gradient norms for one backward pass.

Parameter gradients are read with tensor hooks on the parameters (they see the gradient of this
backward pass before it is accumulated into ``.grad``, once per parameter even when it is shared).
Output gradients are read with a forward hook that registers a tensor hook on each output tensor —
not ``register_full_backward_hook``, which breaks on in-place ops and tuple outputs. A hook registered
before a downstream in-place op sees the gradient of the value the module returned.

Norms stay on the device as 0-d tensors until :meth:`Probe.norms` reads them back in one transfer.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from ._tree import tensors_in
from .select import SelectorLike, select_modules


def combine_norms(norms: list[float | None]) -> float | None:
    """L2 norm of a group from its members' L2 norms; ``None`` when no member received a gradient."""
    present = [n for n in norms if n is not None]
    if not present:
        return None
    return math.sqrt(math.fsum(n * n for n in present))


class Probe:
    """Records gradient norms of selected modules during backward passes inside its context.

    Use :func:`probe` to create one. ``norms()`` gives the L2 norm of each module's parameter
    gradients (over all its trainable parameters, recursively); ``output_norms()`` the L2 norm of the
    gradient with respect to each module's output (over all output tensors and all calls in the
    forward). A module that received no gradient maps to ``None``, never to 0.0. A probe measures one
    backward pass: if several run inside the context, parameter norms are those of the last one.
    """

    def __init__(self, model: nn.Module, selector: SelectorLike, *, params: bool = True, outputs: bool = True):
        self.model = model
        self.modules = select_modules(model, selector)
        self._want_params = params
        self._want_outputs = outputs
        self._handles: list[Any] = []
        self._param_norm: dict[int, torch.Tensor] = {}
        self._output_sq: dict[str, list[torch.Tensor]] = {}
        self._module_params: dict[str, list[nn.Parameter]] = {}

    # -- hook installation -------------------------------------------------------------------------
    def _install(self) -> None:
        hooked: set[int] = set()
        for name, module in self.modules:
            params = [p for p in module.parameters() if p.requires_grad]
            self._module_params[name] = params
            if self._want_params:
                for param in params:
                    if id(param) not in hooked:
                        hooked.add(id(param))
                        self._handles.append(param.register_hook(self._param_hook(id(param))))
            if self._want_outputs:
                self._output_sq[name] = []
                self._handles.append(module.register_forward_hook(self._forward_hook(name)))

    def _param_hook(self, key: int):
        def hook(grad: torch.Tensor) -> None:
            self._param_norm[key] = torch.linalg.vector_norm(grad.detach())

        return hook

    def _forward_hook(self, name: str):
        def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
            for tensor in tensors_in(output):
                if tensor.requires_grad:
                    self._handles.append(tensor.register_hook(self._output_hook(name)))

        return hook

    def _output_hook(self, name: str):
        def hook(grad: torch.Tensor) -> None:
            self._output_sq[name].append(torch.linalg.vector_norm(grad.detach()))

        return hook

    def _remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    # -- results -----------------------------------------------------------------------------------
    def norms(self) -> dict[str, float | None]:
        """``{module_name: L2 norm of its parameter gradients}``, ``None`` for no gradient."""
        keys = list(self._param_norm)
        values = dict(zip(keys, _to_floats([self._param_norm[k] for k in keys]), strict=True))
        return {
            name: combine_norms([values.get(id(p)) for p in params])
            for name, params in self._module_params.items()
        }

    def output_norms(self) -> dict[str, float | None]:
        """``{module_name: L2 norm of the gradient w.r.t. its outputs}``, ``None`` for no gradient."""
        names = list(self._output_sq)
        flat = [t for name in names for t in self._output_sq[name]]
        floats = iter(_to_floats(flat))
        return {name: combine_norms([next(floats) for _ in self._output_sq[name]]) for name in names}


def _to_floats(tensors: list[torch.Tensor]) -> list[float]:
    """Read many 0-d tensors back with one device-to-host transfer."""
    if not tensors:
        return []
    return torch.stack([t.to(torch.float64) for t in tensors]).tolist()


@contextmanager
def probe(
    model: nn.Module, selector: SelectorLike, *, params: bool = True, outputs: bool = True
) -> Iterator[Probe]:
    """Attach a :class:`Probe` to the modules of ``model`` matched by ``selector``.

    >>> with probe(model, "blocks.*.adapter") as p:
    ...     loss.backward()
    >>> p.norms()  # {"blocks.0.adapter": 0.12, ...}

    All hooks are removed on exit, also when the body raises.
    """
    instance = Probe(model, selector, params=params, outputs=outputs)
    try:
        instance._install()
        yield instance
    finally:
        instance._remove()
