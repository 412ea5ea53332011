"""Probe: hooks on selected modules that record gradient norms of the backward passes run inside it.

Parameter gradients are read with tensor hooks on the parameters (they see the gradient of one backward
pass before it is accumulated into ``.grad``, once per parameter even when it is shared). Output gradients
are read with a forward hook that registers a tensor hook on each output tensor — not
``register_full_backward_hook``, which breaks on in-place ops and tuple outputs. A hook registered before a
downstream in-place op sees the gradient of the value the module returned.

Three numbers, each with one meaning:

* :meth:`Probe.norms` — the parameter gradient of the **last backward pass** run inside the probe;
  :meth:`Probe.backward_norms` — the same for every backward pass, in order.
* :meth:`Probe.accumulated_norms` — the norm of ``.grad`` (everything accumulated since the last
  ``zero_grad``: what ``optimizer.step()`` will use), read when the probe exits (or now, inside it).
* :meth:`Probe.output_norms` — the gradient with respect to each module's outputs in the last backward pass.
  It needs the **forward** to run inside the probe (that is when output hooks attach); a module whose forward
  was not seen is an error, never ``None``.

``None`` always means "observed, and no gradient reached it". Norms are float64, read back once per device.
Under DDP and FSDP2, :meth:`accumulated_norms` and :meth:`output_norms` are global (every rank must call
them: they communicate); per-backward parameter norms are this rank's local gradient before DDP/FSDP2
reduce it, so they are only given with ``local=True``. A compiled model runs eagerly inside the probe.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ._tree import tensors_in
from .errors import ProbeError
from .norms import combine_norms, to_floats, vector_norms
from .runtime import Runtime, force_eager, inspect_model, unwrap
from .select import SelectorLike, select_modules

ModuleNorms = dict[str, float | None]


class Probe:
    """Records gradient norms of selected modules during the backward passes inside its ``with`` block.

    ``with gf.Probe(model, selector) as p:`` and ``with gf.probe(model, selector) as p:`` are the same.
    All hooks are removed on exit, also when the body raises.

    Args:
        model: the model (a ``torch.compile``, DDP or DataParallel wrapper is taken off).
        selector: which modules to probe (see :mod:`gradflow.select`).
        params: record parameter-gradient norms (over each module's trainable parameters, recursively).
        outputs: record output-gradient norms (over all output tensors and all calls of the module).
    """

    def __init__(self, model: nn.Module, selector: SelectorLike, *, params: bool = True, outputs: bool = True):
        self._given = model
        self.model, aliases = unwrap(model)
        self.modules = select_modules(self.model, selector, aliases=aliases)
        self._want_params = params
        self._want_outputs = outputs
        self._module_params = {name: [p for p in module.parameters() if p.requires_grad]
                               for name, module in self.modules}
        self._params = list({id(p): p for ps in self._module_params.values() for p in ps}.values())
        self.runtime: Runtime | None = None
        self.notes: list[str] = []
        self._stack: contextlib.ExitStack | None = None
        self._handles: list[Any] = []
        self._forward_calls: dict[str, int] = {name: 0 for name, _ in self.modules}
        self._in_backward = False
        self._read_grad_later = True
        self._pending_param_refs: list[tuple[int, nn.Parameter]] = []
        self._pending_param_grads: list[tuple[int, torch.Tensor]] = []
        self._pending_outputs: list[tuple[list[str], torch.Tensor]] = []
        self._hooked: dict[int, tuple[weakref.ref, list[str]]] = {}
        self._pending_bytes = 0
        self._current_params: dict[int, torch.Tensor] = {}
        self._current_outputs: dict[str, list[torch.Tensor]] = {}
        self._backwards: list[tuple[dict[int, torch.Tensor], dict[str, list[torch.Tensor]], bool]] = []
        self._accumulated: dict[int, torch.Tensor | None] | None = None

    # -- context -----------------------------------------------------------------------------------
    def __enter__(self) -> Probe:
        if self._stack is not None:
            raise ProbeError("this Probe is already active; create a new one for another `with` block.")
        self.runtime = inspect_model(self._given)
        self.notes = list(self.runtime.notes)
        self._stack = contextlib.ExitStack()
        try:
            if self.runtime.compiled:  # only run compiled code eagerly: the user's own DDP forward must still work
                self._stack.enter_context(force_eager())
            self._install()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            if self._want_params and self._accumulated is None:
                self._accumulated = self._grad_norm_tensors()
        finally:
            for handle in self._handles:
                handle.remove()
            self._handles.clear()
            if self._stack is not None:
                self._stack.close()
                self._stack = None

    @property
    def active(self) -> bool:
        """Whether the probe's hooks are installed (inside its ``with`` block)."""
        return self._stack is not None

    # -- hooks -------------------------------------------------------------------------------------
    # Hooks only collect: the norms of one backward are computed at its end in one fused float64 call per
    # (device, dtype) group, not one kernel per hook. A parameter whose .grad is None when its gradient arrives
    # (the usual zero_grad(set_to_none=True) loop) is read from .grad at the end (torch's AccumulateGrad takes
    # the gradient over without a copy); one that accumulates, has post-accumulate hooks, or lives under
    # DDP/FSDP2 (where .grad is reduced across ranks) keeps its own gradient tensor until then.
    _FLUSH_BYTES = 64 * 1024 * 1024  # output gradients held before an early fused norm (bounded memory)

    def _install(self) -> None:
        self._read_grad_later = not (self.runtime is not None and self.runtime.is_global)
        if self._want_params:
            for param in self._params:
                self._handles.append(param.register_hook(self._param_hook(param)))
        for name, module in self.modules:
            self._handles.append(module.register_forward_hook(self._forward_hook(name)))

    def _begin_backward(self) -> None:
        if not self._in_backward:
            self._in_backward = True
            torch.autograd.Variable._execution_engine.queue_callback(self._end_backward)

    def _end_backward(self) -> None:
        self._flush_outputs()
        refs = [(key, p.grad) for key, p in self._pending_param_refs]
        grads = self._pending_param_grads + [(key, g) for key, g in refs if g is not None]
        norms = vector_norms([g for _, g in grads], exact=False)
        self._current_params = {key: n for (key, _), n in zip(grads, norms, strict=True)}
        self._pending_param_refs, self._pending_param_grads = [], []
        synced = True
        for wrapper in self.runtime.outer if self.runtime is not None else []:
            synced = synced and bool(getattr(wrapper, "require_backward_grad_sync", True))
        self._backwards.append((self._current_params, self._current_outputs, synced))
        self._current_params, self._current_outputs = {}, {}
        self._hooked = {}
        self._in_backward = False

    def _param_hook(self, param: nn.Parameter) -> Callable[[torch.Tensor], None]:
        key = id(param)

        def hook(grad: torch.Tensor) -> None:
            self._begin_backward()
            if self._read_grad_later and param.grad is None and not getattr(param, "_post_accumulate_grad_hooks",
                                                                            None):
                self._pending_param_refs.append((key, param))
            else:
                self._pending_param_grads.append((key, grad.detach()))

        return hook

    def _forward_hook(self, name: str) -> Callable[..., None]:
        def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
            self._forward_calls[name] += 1
            if not self._want_outputs:
                return
            for tensor in tensors_in(output):
                if not tensor.requires_grad:
                    continue
                # A container returns its last child's tensor: one hook per tensor, shared by every module
                # that returned it, so the same gradient is not measured twice.
                seen = self._hooked.get(id(tensor))
                if seen is not None and seen[0]() is tensor:
                    seen[1].append(name)
                    continue
                names = [name]
                self._hooked[id(tensor)] = (weakref.ref(tensor), names)
                self._handles.append(tensor.register_hook(self._output_hook(names)))

        return hook

    def _output_hook(self, names: list[str]) -> Callable[[torch.Tensor], None]:
        def hook(grad: torch.Tensor) -> None:
            self._begin_backward()
            self._pending_outputs.append((names, grad.detach()))
            self._pending_bytes += grad.numel() * grad.element_size()
            if self._pending_bytes > self._FLUSH_BYTES:
                self._flush_outputs()

        return hook

    def _flush_outputs(self) -> None:
        if not self._pending_outputs:
            return
        norms = vector_norms([g for _, g in self._pending_outputs], exact=False)
        for (names, _), norm in zip(self._pending_outputs, norms, strict=True):
            for name in names:
                self._current_outputs.setdefault(name, []).append(norm)
        self._pending_outputs, self._pending_bytes = [], 0

    # -- results -----------------------------------------------------------------------------------
    @property
    def n_backward(self) -> int:
        """How many backward passes reached a probed parameter or output inside the probe."""
        return len(self._backwards)

    def forward_calls(self) -> dict[str, int]:
        """``{module: number of forward calls seen inside the probe}``."""
        return dict(self._forward_calls)

    def _require_local_ok(self, what: str, local: bool) -> None:
        if self.runtime is not None and self.runtime.is_global and not local:
            raise ProbeError(
                f"{what} under {self.runtime.scope.upper()} would be this rank's local gradient, before "
                f"{self.runtime.scope.upper()} reduces it across ranks. Use accumulated_norms() for the global "
                "gradient the optimizer sees, or pass local=True to get this rank's numbers knowingly."
            )

    def _module_norms(self, per_param: dict[int, torch.Tensor]) -> ModuleNorms:
        keys = list(per_param)
        values = dict(zip(keys, to_floats([per_param[k] for k in keys]), strict=True))
        return {name: combine_norms([values.get(id(p)) for p in params])
                for name, params in self._module_params.items()}

    def _observed_backwards(self, what: str) -> list[tuple[dict, dict, bool]]:
        if not self._backwards:
            raise ProbeError(
                f"no backward pass reached the probed modules inside the probe, so there are no {what} to "
                "report. Run loss.backward() inside the `with gf.probe(...)` block; if it did run there, no "
                "gradient reaches these modules (accumulated_norms() then reports None for them)."
            )
        return self._backwards

    def norms(self, *, local: bool = False) -> ModuleNorms:
        """``{module: L2 norm of its parameters' gradient in the last backward pass}``; ``None``: no gradient.

        Args:
            local: under DDP/FSDP2, accept this rank's local (unreduced) gradient.

        Raises:
            ProbeError: parameters were not probed, no backward pass was seen, or DDP/FSDP2 without ``local``.
        """
        return self.backward_norms(local=local)[-1]

    def backward_norms(self, *, local: bool = False) -> list[ModuleNorms]:
        """:meth:`norms` of every backward pass seen inside the probe, in order."""
        if not self._want_params:
            raise ProbeError("this probe was created with params=False; it records output gradients only.")
        self._require_local_ok("per-backward parameter norms", local)
        return [self._module_norms(params) for params, _, _ in self._observed_backwards("parameter norms")]

    def accumulated_norms(self, *, local: bool = False) -> ModuleNorms:
        """``{module: L2 norm of its parameters' .grad}``: the accumulated gradient ``optimizer.step()`` uses.

        Read when the probe exits (inside the ``with`` block: read now). ``None``: ``.grad`` is None. Under
        DDP the ``.grad`` of a synchronised backward is already global; under FSDP2 the shards' norms are
        combined across ranks (every rank must call this).
        """
        if not self._want_params:
            raise ProbeError("this probe was created with params=False; it records output gradients only.")
        per_param = self._accumulated if self._accumulated is not None and not self.active \
            else self._grad_norm_tensors()
        runtime = self.runtime or inspect_model(self._given)
        if runtime.scope == "ddp" and not local and self._backwards and not self._backwards[-1][2]:
            raise ProbeError(
                "the last backward pass ran under DDP's no_sync(): .grad holds this rank's local accumulated "
                "gradient, not yet all-reduced. Read accumulated_norms() after the synchronised backward, or pass "
                "local=True."
            )
        if runtime.scope == "fsdp2" and not local:
            return self._global_sharded_norms(per_param)
        return self._module_norms({k: v for k, v in per_param.items() if v is not None})

    def _grad_norm_tensors(self) -> dict[int, torch.Tensor | None]:
        with_grad = [p for p in self._params if p.grad is not None]
        norms = vector_norms([p.grad for p in with_grad]) if with_grad else []
        out: dict[int, torch.Tensor | None] = {id(p): None for p in self._params}
        out.update({id(p): n for p, n in zip(with_grad, norms, strict=True)})
        return out

    def _global_sharded_norms(self, per_param: dict[int, torch.Tensor | None]) -> ModuleNorms:
        from .distributed import sharded_norms

        combined = sharded_norms([per_param[id(p)] for p in self._params], self._params)
        values = {id(p): v for p, v in zip(self._params, combined, strict=True)}
        return {name: combine_norms([values.get(id(p)) for p in params])
                for name, params in self._module_params.items()}

    def output_norms(self, *, allow_unobserved: bool = False, local: bool = False) -> ModuleNorms:
        """``{module: L2 norm of the gradient w.r.t. its outputs in the last backward pass}``.

        ``None``: the module's forward ran inside the probe and no gradient reached its outputs. Under
        DDP/FSDP2 the norm is that of the global batch's output gradient (every rank must call this).

        Args:
            allow_unobserved: leave out modules whose forward did not run inside the probe instead of raising.
            local: under DDP/FSDP2, return this rank's numbers without communicating.

        Raises:
            ProbeError: a module's forward never ran inside the probe (the output hooks attach at forward
                time: run the forward inside the ``with`` block), or outputs were not probed.
        """
        if not self._want_outputs:
            raise ProbeError("this probe was created with outputs=False; it records parameter gradients only.")
        unseen = [name for name, count in self._forward_calls.items() if count == 0]
        if unseen and not allow_unobserved:
            every = len(unseen) == len(self._forward_calls)
            cause = ("no forward pass ran inside the probe (output hooks attach when the forward runs: a forward "
                     "run before `with gf.probe(...)` cannot be observed)" if every else
                     f"the forward of {len(unseen)} probed module(s) never ran inside the probe "
                     f"({', '.join(unseen[:4])}{', ...' if len(unseen) > 4 else ''})")
            raise ProbeError(
                f"output gradients were not observed: {cause}. Run the forward and the backward inside the "
                "`with` block, or pass allow_unobserved=True to leave unobserved modules out.")
        seen = [name for name, count in self._forward_calls.items() if count > 0]
        outputs = self._observed_backwards("output norms")[-1][1] if seen else {}
        squares = [torch.stack([n.pow(2) for n in outputs[name]]).sum() if name in outputs
                   else torch.zeros((), dtype=torch.float64) for name in seen]
        present = [name in outputs for name in seen]
        runtime = self.runtime or inspect_model(self._given)
        if runtime.is_global and not local:
            from .distributed import global_output_square_sums

            squares, present = global_output_square_sums(squares, present, runtime)
        values = to_floats(squares)
        return {name: (value ** 0.5 if ok else None) for name, value, ok in zip(seen, values, present, strict=True)}


def probe(model: nn.Module, selector: SelectorLike, *, params: bool = True, outputs: bool = True) -> Probe:
    """A :class:`Probe` on the modules of ``model`` matched by ``selector``; use it as a context manager.

    Args:
        model: the model (compile/DDP/DataParallel wrappers are taken off).
        selector: which modules to probe.
        params: record parameter-gradient norms.
        outputs: record output-gradient norms.

    Returns:
        The :class:`Probe` (its hooks go on when the ``with`` block starts).

    >>> with gf.probe(model, "blocks.*.adapter") as p:
    ...     loss = loss_fn(model, batch)   # the forward inside the probe: output hooks attach here
    ...     loss.backward()
    >>> p.norms()                          # {"blocks.0.adapter": 0.12, ...} (this backward)
    >>> p.accumulated_norms()              # the .grad the optimizer will use
    >>> p.output_norms()

    All hooks are removed on exit, also when the body raises.
    """
    return Probe(model, selector, params=params, outputs=outputs)
