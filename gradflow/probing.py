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
import dataclasses
import sys
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ._tree import tensors_and_opaque, tensors_in
from .errors import ProbeError
from .norms import combine_norms, piece_norms, to_floats, vector_norms
from .runtime import Runtime, force_eager, inspect_model, unwrap
from .select import SelectorLike, resolve_containers, select_modules

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
        # a selected container (peft's ModuleDict of adapters) never runs: probe the modules inside it
        self.modules, self._selection_notes = resolve_containers(select_modules(self.model, selector, aliases=aliases))
        self._want_params = params
        self._want_outputs = outputs
        params_of = _trainable_parameters()
        self._params = list({id(p): p for _, module in self.modules for p in params_of(module)}.values())
        # ids, not parameters: tuples of ints are not tracked by the garbage collector
        self._module_param_ids = {name: tuple(id(p) for p in params_of(module)) for name, module in self.modules}
        self.runtime: Runtime | None = None
        self.notes: list[str] = []
        self._stack: contextlib.ExitStack | None = None
        self._handles: list[Any] = []
        self._forward_calls: dict[str, int] = {name: 0 for name, _ in self.modules}
        self._wrapper_forwards = 0
        self._task: int | None = None  # the autograd graph task whose end closes the current record
        self._nested_tasks: set[int] = set()
        self._provisional: int | None = None  # a nested task that ended first; its outer backward may go on
        self._carry: _BackwardRecord | None = None
        self._carry_refs: set[int] = set()
        self._leaf_hooks: dict[int, _OutputHook] = {}
        self._opaque: set[str] = set()  # modules whose output held objects pytree cannot see into
        self._read_grad_later = True
        self._pending_param_refs: list[tuple[int, nn.Parameter]] = []
        self._pending_param_grads: list[tuple[int, torch.Tensor]] = []
        self._output_pieces: list[tuple[tuple[str, ...], torch.Tensor]] = []
        self._hooked: dict[int, _OutputHook] = {}
        self._output_handles: list[Any] = []
        self._backwards: list[_BackwardRecord] = []
        self._keys: dict[tuple[Any, ...], tuple[Any, ...]] = {}
        self._accumulated: dict[int, torch.Tensor | None] | None = None
        self._accumulators: dict[int, Any] = {}

    # -- context -----------------------------------------------------------------------------------
    def __enter__(self) -> Probe:
        if self._stack is not None:
            raise ProbeError("this Probe is already active; create a new one for another `with` block.")
        self.runtime = inspect_model(self._given)
        self.notes = [*self.runtime.notes, *self._selection_notes]
        self._accumulated = None  # read again when this block exits (a probe may be entered again)
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
            for handle in self._handles + self._output_handles:
                handle.remove()
            self._handles.clear()
            self._output_handles.clear()
            self._hooked, self._leaf_hooks = {}, {}
            self._accumulators = {}
            if self._stack is not None:
                self._stack.close()
                self._stack = None

    @property
    def active(self) -> bool:
        """Whether the probe's hooks are installed (inside its ``with`` block)."""
        return self._stack is not None

    # -- hooks -------------------------------------------------------------------------------------
    # No gradient is held longer than needed: an output gradient is reduced in its hook to the norms of its
    # 4K-element pieces (one kernel, while it is still in cache), and the pieces of one backward are combined at
    # its end in one fused float64 call. Holding every output gradient until then instead measured 1.10x a
    # training step on a 324-module ViT against 1.02x for the pieces (fresh memory for each held tensor).
    # A parameter whose .grad is None when its gradient arrives (the usual zero_grad(set_to_none=True) loop)
    # is read from .grad at the end (torch's AccumulateGrad takes the gradient over without a copy); one that
    # accumulates, has post-accumulate hooks, or lives under DDP/FSDP2 (where .grad is reduced across ranks)
    # keeps its own gradient tensor until then.

    # Hook objects are small slotted callables and one bound method shared by every module: a probe on every
    # module of a model makes thousands of them, and each object that outlives a garbage-collector pass makes a
    # full collection of the user's heap come sooner (measured: 5% of a training step with closures).

    def _install(self) -> None:
        self._read_grad_later = not (self.runtime is not None and self.runtime.is_global)
        if self._want_params:
            if self._read_grad_later:  # to ask, in a hook, whether this pass will write .grad (not autograd.grad)
                self._accumulators = {id(p): _accumulate_node(p) for p in self._params}
            for param in self._params:
                self._handles.append(param.register_hook(_ParamHook(self, param)))
        self._names_of: dict[int, tuple[str, ...]] = {}
        for name, module in self.modules:
            self._names_of[id(module)] = (*self._names_of.get(id(module), ()), name)
        on_forward = self._on_forward
        for module in {id(module): module for _, module in self.modules}.values():
            self._handles.append(module.register_forward_hook(on_forward))
        # The model's own output gradient arrives first in a backward, in the outermost autograd graph task:
        # a record then spans the whole backward, reentrant checkpoint regions (nested tasks) included.
        self._handles.append(self.model.register_forward_hook(self._on_model_forward))
        if self.runtime is not None and self.runtime.scope == "ddp":  # did the forward go through DDP?
            for wrapper in self.runtime.outer:
                self._handles.append(wrapper.register_forward_hook(self._on_wrapper_forward))

    def _on_wrapper_forward(self, _module: nn.Module, _inputs: Any, _output: Any) -> None:
        self._wrapper_forwards += 1

    def _on_model_forward(self, _module: nn.Module, _inputs: Any, output: Any) -> None:
        for tensor in tensors_in(output):
            if tensor.requires_grad and tensor.grad_fn is not None:
                self._output_handles.append(tensor.register_hook(self._on_model_output_grad))

    def _on_model_output_grad(self, _grad: torch.Tensor) -> None:
        self._begin_backward()

    def _begin_backward(self) -> None:
        task = torch._C._current_graph_task_id()
        if self._task is not None:
            if task == self._task or task in self._nested_tasks:
                return
            if _inside_function_backward():  # a reentrant backward inside ours (checkpoint): the same record
                self._nested_tasks.add(task)
                return
            self._discard_partial()  # the backward our callback waited for raised before its end
        if self._provisional is not None:
            if task < self._provisional:  # the outer backward of the nested one that ended goes on
                self._carry = self._backwards.pop()
            else:
                self._carry_refs = set()
            self._provisional = None
        self._task = task
        torch.autograd.Variable._execution_engine.queue_callback(self._end_backward)

    def _discard_partial(self) -> None:
        self._pending_param_refs, self._pending_param_grads, self._output_pieces = [], [], []
        self._carry, self._carry_refs = None, set()
        self._hooked = {}
        self._task, self._nested_tasks = None, set()
        note = "a backward pass inside the probe raised before its end; its partial gradients are not reported"
        if note not in self.notes:
            self.notes.append(note)

    def _end_backward(self) -> None:
        task = self._task
        self._task, self._nested_tasks = None, set()
        if self._carry is None and not (self._pending_param_refs or self._pending_param_grads or self._output_pieces):
            return  # only the model's output hook fired: no gradient reached a probed module
        carried = {key for key, _ in self._pending_param_refs}
        refs = [(key, p.grad) for key, p in self._pending_param_refs]
        grads = self._pending_param_grads + [(key, g) for key, g in refs if g is not None]
        norms = vector_norms([g for _, g in grads], exact=False)
        self._pending_param_refs, self._pending_param_grads = [], []
        synced = True
        for wrapper in self.runtime.outer if self.runtime is not None else []:
            synced = synced and bool(getattr(wrapper, "require_backward_grad_sync", True))
        names, pieces = _unzip(self._output_pieces)
        record = _BackwardRecord(params=_pack([key for key, _ in grads], norms, self._keys),
                                 outputs=_pack(names, vector_norms(pieces), self._keys), synced=synced)
        if self._carry is not None:  # later entries win: a parameter read again holds its whole gradient
            record = _BackwardRecord(params=self._carry.params + record.params,
                                     outputs=self._carry.outputs + record.outputs, synced=synced)
            carried |= self._carry_refs
            self._carry = None
        self._backwards.append(record)
        self._output_pieces = []
        self._hooked = {}
        # Tensors freed since are gone with their hooks; keep handles only for outputs still alive.
        self._output_handles = [h for h in self._output_handles if h.hooks_dict_ref() is not None]
        self._carry_refs = set()
        if _inside_function_backward():  # a nested backward ended first: its outer one may still reach us
            self._provisional, self._carry_refs = task, carried

    def _on_param_grad(self, param: nn.Parameter, grad: torch.Tensor) -> None:
        self._begin_backward()
        # .grad is this backward's gradient when it starts empty and nothing else touches it on the way: no other
        # tensor hook (one added after ours could rescale it) and no post-accumulate hook
        if (self._read_grad_later and (param.grad is None or id(param) in self._carry_refs)
                and len(param._backward_hooks or ()) == 1 and not getattr(param, "_post_accumulate_grad_hooks", None)
                and _will_accumulate(self._accumulators.get(id(param)))):
            self._pending_param_refs.append((id(param), param))
        else:
            self._pending_param_grads.append((id(param), grad.detach()))

    def _on_forward(self, module: nn.Module, _inputs: Any, output: Any) -> None:
        names = self._names_of[id(module)]
        for name in names:
            self._forward_calls[name] += 1
        if not self._want_outputs:
            return
        tensors, opaque = tensors_and_opaque(output)
        if opaque:
            self._opaque.update(names)
        for tensor in tensors:
            if not tensor.requires_grad:
                continue
            # A container returns its last child's tensor: one hook per tensor, shared by every module that
            # returned it, so the same gradient is not measured twice. The handle's weak reference to the
            # tensor's hook dict tells a live tensor from a new one that reuses a freed tensor's id.
            # A leaf (a module returning its own parameter) outlives the backward: its hook stays for the
            # probe's life instead of piling up one per step.
            hooked = self._leaf_hooks if tensor.grad_fn is None else self._hooked
            seen = hooked.get(id(tensor))
            if seen is not None and _same_live(seen.handle.hooks_dict_ref(), tensor._backward_hooks):
                seen.names = (*seen.names, *(name for name in names if name not in seen.names))
                continue
            hook = _OutputHook(self, names)
            hook.handle = tensor.register_hook(hook)
            hooked[id(tensor)] = hook
            self._output_handles.append(hook.handle)

    def _on_output_grad(self, names: tuple[str, ...], grad: torch.Tensor) -> None:
        self._begin_backward()
        self._output_pieces.append((names, piece_norms(grad)))

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

    def _module_norms(self, values: dict[int, float]) -> ModuleNorms:
        return {name: combine_norms([values.get(key) for key in keys])
                for name, keys in self._module_param_ids.items()}

    def _observed_backwards(self, what: str) -> list[_BackwardRecord]:
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
        return self._param_norms_of(self._param_backwards(local)[-1:])[0]

    def backward_norms(self, *, local: bool = False) -> list[ModuleNorms]:
        """:meth:`norms` of every backward pass seen inside the probe, in order."""
        return self._param_norms_of(self._param_backwards(local))

    def _param_backwards(self, local: bool) -> list[_BackwardRecord]:
        if not self._want_params:
            raise ProbeError("this probe was created with params=False; it records output gradients only.")
        self._require_local_ok("per-backward parameter norms", local)
        return self._observed_backwards("parameter norms")

    def _param_norms_of(self, records: list[_BackwardRecord]) -> list[ModuleNorms]:
        return [self._module_norms(dict(_unpack(record.params))) for record in records]

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
        if (runtime.scope == "ddp" and not local and self._backwards and self._wrapper_forwards == 0
                and any(self._forward_calls.values())):
            raise ProbeError(
                "the forward inside the probe called the module DDP wraps, not the DDP wrapper, so DDP did not "
                "all-reduce the backward: .grad holds this rank's local gradient. Call the DDP-wrapped model in "
                "the training step, or pass local=True to get this rank's numbers knowingly."
            )
        if runtime.scope == "ddp" and not local and self._backwards and not self._backwards[-1].synced:
            raise ProbeError(
                "the last backward pass ran under DDP's no_sync(): .grad holds this rank's local accumulated "
                "gradient, not yet all-reduced. Read accumulated_norms() after the synchronised backward, or pass "
                "local=True."
            )
        if runtime.scope == "fsdp2" and not local:
            return self._global_sharded_norms(per_param)
        present = [(k, v) for k, v in per_param.items() if v is not None]
        return self._module_norms(dict(zip([k for k, _ in present], to_floats([v for _, v in present]), strict=True)))

    def _grad_norm_tensors(self) -> dict[int, torch.Tensor | None]:
        # Always recomputed: a .grad changed in place through .data (or by an optimizer) keeps its version.
        present = [p for p in self._params if p.grad is not None]
        norms = vector_norms([p.grad for p in present], exact=False) if present else []
        out: dict[int, torch.Tensor | None] = {id(p): None for p in self._params}
        out.update({id(p): n for p, n in zip(present, norms, strict=True)})
        return out

    def _global_sharded_norms(self, per_param: dict[int, torch.Tensor | None]) -> ModuleNorms:
        from .distributed import sharded_norms

        combined = sharded_norms([per_param[id(p)] for p in self._params], self._params)
        values = {id(p): v for p, v in zip(self._params, combined, strict=True)}
        return {name: combine_norms([values.get(key) for key in keys])
                for name, keys in self._module_param_ids.items()}

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
        opaque = [name for name in self._opaque if name not in unseen]
        if (unseen or opaque) and not allow_unobserved:
            every = len(unseen) == len(self._forward_calls)
            cause = ("no forward pass ran inside the probe (output hooks attach when the forward runs: a forward "
                     "run before `with gf.probe(...)` cannot be observed)" if every else
                     f"the forward of {len(unseen)} probed module(s) never ran inside the probe "
                     f"({', '.join(unseen[:4])}{', ...' if len(unseen) > 4 else ''})" if unseen else
                     f"{len(opaque)} probed module(s) returned an object gradflow cannot see into "
                     f"({', '.join(opaque[:4])}{', ...' if len(opaque) > 4 else ''}: torch's pytree sees into "
                     "tensors, tuples, lists, dicts and namedtuples, not dataclasses or other objects)")
            raise ProbeError(
                f"output gradients were not observed: {cause}. Run the forward and the backward inside the "
                "`with` block (for opaque outputs: probe a module inside that returns tensors, or register the "
                "type with torch.utils._pytree), or pass allow_unobserved=True to leave unobserved modules out.")
        seen = [name for name, count in self._forward_calls.items() if count > 0 and name not in self._opaque]
        sums: dict[str, float] = {}
        for names, norm in (_unpack(self._observed_backwards("output norms")[-1].outputs) if seen else []):
            for name in names:
                sums[name] = sums.get(name, 0.0) + norm * norm
        values = [sums.get(name, 0.0) for name in seen]
        present = [name in sums for name in seen]
        runtime = self.runtime or inspect_model(self._given)
        if runtime.is_global and not local:
            from .distributed import global_output_square_sums

            squares, present = global_output_square_sums(
                [torch.tensor(value, dtype=torch.float64) for value in values], present, runtime)
            values = to_floats(squares)
        return {name: (value ** 0.5 if ok else None) for name, value, ok in zip(seen, values, present, strict=True)}


def _trainable_parameters() -> Callable[[nn.Module], list[nn.Parameter]]:
    """``module -> module.parameters()`` that require grad, each subtree walked once for all selected modules."""
    memo: dict[int, list[nn.Parameter]] = {}

    def params_of(module: nn.Module) -> list[nn.Parameter]:
        found = memo.get(id(module))
        if found is None:
            found = memo[id(module)] = _union(module, params_of)
        return found

    return params_of


def _union(module: nn.Module, params_of: Callable[[nn.Module], list[nn.Parameter]]) -> list[nn.Parameter]:
    own = [p for p in module._parameters.values() if p is not None and p.requires_grad]
    children = [p for child in module._modules.values() if child is not None for p in params_of(child)]
    return list({id(p): p for p in own + children}.values())


def _accumulate_node(param: nn.Parameter) -> Any:
    """The AccumulateGrad node that writes ``param.grad`` (``None`` where torch cannot give it)."""
    try:
        return torch.autograd.graph.get_gradient_edge(param).node
    except Exception:  # noqa: BLE001 - then every gradient is kept (correct, only slower)
        return None


def _will_accumulate(node: Any) -> bool:
    """Whether the running backward pass will write this parameter's ``.grad``.

    False under ``torch.autograd.grad`` (torch refuses the question for leaves there) and whenever torch
    cannot answer: the gradient is then kept by the hook, which is always correct.
    """
    if node is None:
        return False
    try:
        return bool(torch._C._will_engine_execute_node(node))
    except Exception:  # noqa: BLE001 - see above
        return False


def _inside_function_backward() -> bool:
    """Whether this call runs inside the backward of an autograd Function (a nested, reentrant backward:
    ``checkpoint(use_reentrant=True)`` runs one for its region)."""
    frame = sys._getframe(2)
    while frame is not None:
        if frame.f_code.co_qualname == "BackwardCFunction.apply":
            return True
        frame = frame.f_back
    return False


def _same_live(hooks_seen: object, hooks_now: object) -> bool:
    return hooks_seen is not None and hooks_seen is hooks_now


class _ParamHook:
    """Tensor hook on one parameter: hands its gradient of this backward to the probe."""

    __slots__ = ("param", "probe")

    def __init__(self, probe: Probe, param: nn.Parameter):
        self.probe, self.param = probe, param

    def __call__(self, grad: torch.Tensor) -> None:
        self.probe._on_param_grad(self.param, grad)


class _OutputHook:
    """Tensor hook on one output tensor, shared by every module that returned it."""

    __slots__ = ("handle", "names", "probe")

    def __init__(self, probe: Probe, names: tuple[str, ...]):
        self.probe, self.names, self.handle = probe, names, None

    def __call__(self, grad: torch.Tensor) -> None:
        self.probe._on_output_grad(self.names, grad)


@dataclasses.dataclass
class _BackwardRecord:
    """One backward pass: norms packed as one float64 vector per device (small however long the probe lives)."""

    params: list[tuple[tuple[int, ...], torch.Tensor]]
    outputs: list[tuple[tuple[tuple[str, ...], ...], torch.Tensor]]
    synced: bool


def _unzip(pairs: list[tuple[Any, torch.Tensor]]) -> tuple[list[Any], list[torch.Tensor]]:
    return [key for key, _ in pairs], [value for _, value in pairs]


def _pack(keys: list[Any], scalars: list[torch.Tensor],
          memo: dict[tuple[Any, ...], tuple[Any, ...]]) -> list[tuple[tuple[Any, ...], torch.Tensor]]:
    """Group 0-d tensors by device and stack each group into one vector (no host transfer).

    Key tuples are interned in ``memo``: every backward of a training loop has the same keys, and a probe
    open for a whole run then keeps one copy of them, not one per step.
    """
    groups: dict[torch.device, tuple[list[Any], list[torch.Tensor]]] = {}
    for key, scalar in zip(keys, scalars, strict=True):
        group = groups.setdefault(scalar.device, ([], []))
        group[0].append(key)
        group[1].append(scalar)
    packed = []
    for group_keys, values in groups.values():
        interned = memo.setdefault(tuple(group_keys), tuple(group_keys))
        packed.append((interned, torch.stack(values)))
    return packed


def _unpack(packed: list[tuple[tuple[Any, ...], torch.Tensor]]) -> list[tuple[Any, float]]:
    """``(key, value)`` pairs of packed vectors: one host transfer per device."""
    return [pair for keys, vector in packed for pair in zip(keys, vector.cpu().tolist(), strict=True)]


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
