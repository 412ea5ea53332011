"""What a model runs under, and how gradflow must measure it: compile, DDP, FSDP, process groups.

:func:`inspect_model` looks at a model once and returns a :class:`Runtime`:

* **torch.compile** (``torch.compile(model)``, compiled submodules, ``module.compile()``): dynamo does not
  re-trace for forward hooks added after the first compiled call, so gradflow's hooks would silently not
  fire. gradflow takes the top-level ``OptimizedModule`` apart (``_orig_mod``) and runs every pass under
  ``torch.compiler.set_stance("force_eager")``, so compiled code runs eagerly while it measures. Records
  and output say so.
* **DistributedDataParallel**: the passes run on ``ddp.module`` (DDP's reducer is not involved, so an
  ablated branch's unused parameters cannot confuse it) and gradflow all-reduces the targets' gradients
  itself, as DDP would before the optimizer step. Every rank must call ``compare`` (it communicates).
* **FSDP2** (``fully_shard``): parameters are sharded DTensors that forward swaps out, so gradients are read
  from ``.grad`` after a real backward (FSDP2 reduce-scatters them) and shard norms are combined across ranks.
* **FSDP1** (``FullyShardedDataParallel``): refused, with the way out.
* **nn.DataParallel**: the passes run on ``.module`` with the whole batch (the same gradient DP computes).
* A process group with several ranks and a plain model: each rank measures its own batches; records and
  output say that the numbers are local to the rank.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from .errors import SubjectError
from .select import COMPILE_SEGMENT, is_compile_wrapper

Scope = Literal["local", "ddp", "fsdp2"]


class LocalNumbersWarning(UserWarning):
    """gradflow measured this rank's batches only (a process group exists but the model is not DDP/FSDP2)."""


@dataclass
class Runtime:
    """How to measure a model: the module the passes run on and the wrappers that were taken off it."""

    model: nn.Module
    #: names of wrappers taken off the top of the model ("_orig_mod", "module"); selectors may keep them.
    aliases: tuple[str, ...] = ()
    #: canonical names of compiled modules ("" for the model itself); passes run them eagerly.
    compiled: list[str] = field(default_factory=list)
    scope: Scope = "local"
    world_size: int = 1
    rank: int = 0
    backend: str | None = None
    #: wrappers whose forward must not run during a pass (the loss must call the model it is given).
    outer: list[nn.Module] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def is_global(self) -> bool:
        """Whether numbers are combined across ranks (DDP, FSDP2)."""
        return self.scope != "local"

    def describe(self) -> dict[str, Any]:
        """JSON-ready description for run records."""
        return {
            "scope": self.scope,
            "world_size": self.world_size,
            "rank": self.rank,
            "backend": self.backend,
            "compiled_modules": list(self.compiled),
            "unwrapped": list(self.aliases),
            "notes": list(self.notes),
        }

    @contextlib.contextmanager
    def measuring(self) -> Iterator[None]:
        """The context every pass runs in: compiled code runs eagerly, outer wrappers must stay unused."""
        with contextlib.ExitStack() as stack:
            stack.enter_context(force_eager())
            handles = [module.register_forward_pre_hook(_outer_called(module)) for module in self.outer]
            stack.callback(lambda: [h.remove() for h in handles])
            yield


@contextlib.contextmanager
def force_eager() -> Iterator[None]:
    """Inside: every torch.compile'd function and module runs eagerly (hooks fire)."""
    set_stance = getattr(torch.compiler, "set_stance", None)
    if set_stance is None:  # pragma: no cover - torch < 2.6 has no stances; nothing is compiled then either
        yield
        return
    with set_stance("force_eager"):
        yield


def _outer_called(wrapper: nn.Module) -> Any:
    def hook(_module: nn.Module, _args: Any) -> None:
        raise SubjectError(
            f"the loss function called the {type(wrapper).__name__} wrapper, not the model it was given. gradflow "
            "measures the wrapped module and combines gradients across ranks itself; write the loss as "
            "loss_fn(model, batch) and call `model`, the argument, inside it."
        )

    return hook


def _distributed_state() -> tuple[int, int, str | None]:
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()):
        return 1, 0, None
    return dist.get_world_size(), dist.get_rank(), str(dist.get_backend())


def _is_ddp(module: nn.Module) -> bool:
    parallel = getattr(torch.nn, "parallel", None)
    ddp = getattr(parallel, "DistributedDataParallel", None)
    return ddp is not None and isinstance(module, ddp)


def _fsdp_classes() -> tuple[type | None, type | None]:
    """(FSDP1 class, FSDP2 marker class), ``None`` where this torch build lacks them."""
    if not torch.distributed.is_available():
        return None, None
    try:
        from torch.distributed import fsdp
    except ImportError:  # pragma: no cover - builds without distributed support
        return None, None
    return getattr(fsdp, "FullyShardedDataParallel", None), getattr(fsdp, "FSDPModule", None)


def _compiled_names(model: nn.Module) -> list[str]:
    from .select import canonical_name

    names = []
    for name, module in model.named_modules(remove_duplicate=False):
        if is_compile_wrapper(module) or getattr(module, "_compiled_call_impl", None) is not None:
            names.append(canonical_name(name))
    return list(dict.fromkeys(names))


def unwrap(model: nn.Module) -> tuple[nn.Module, tuple[str, ...]]:
    """``model`` without the wrappers gradflow takes off (compile, DDP, DataParallel), and their names."""
    aliases: list[str] = []
    while True:
        if is_compile_wrapper(model):
            model, alias = getattr(model, COMPILE_SEGMENT), COMPILE_SEGMENT
        elif _is_ddp(model) or isinstance(model, nn.DataParallel):
            model, alias = model.module, "module"
        else:
            return model, tuple(aliases)
        aliases.append(alias)


def inspect_model(model: nn.Module) -> Runtime:
    """Take known wrappers off ``model`` and say how it must be measured (see the module docstring).

    Raises:
        SubjectError: the model is wrapped in something gradflow cannot measure correctly (FSDP1, DDP nested
            inside another module).
    """
    outer: list[nn.Module] = []
    notes: list[str] = []
    world_size, rank, backend = _distributed_state()
    scope: Scope = "local"
    compiled = _compiled_names(model)
    inner, aliases = unwrap(model)
    node = model
    while node is not inner:
        if is_compile_wrapper(node):
            node = getattr(node, COMPILE_SEGMENT)
            continue
        outer.append(node)
        if _is_ddp(node):
            scope = "ddp"
        else:
            notes.append("nn.DataParallel: measured on its module with the whole batch (the same gradient "
                         "DataParallel computes)")
        node = node.module
    model = inner
    fsdp1, fsdp2 = _fsdp_classes()
    for name, module in model.named_modules():
        if fsdp1 is not None and isinstance(module, fsdp1):
            raise SubjectError(
                f"the model contains FullyShardedDataParallel (FSDP1) at {name or 'the top level'!r}; gradflow "
                "cannot read its flattened, sharded parameters per module. Use FSDP2 "
                "(torch.distributed.fsdp.fully_shard), which gradflow measures, or measure the unwrapped model."
            )
        if module is not model and _is_ddp(module):
            raise SubjectError(
                f"the model contains DistributedDataParallel inside it at {name!r}; wrap the whole model in DDP "
                "(or none of it) so that gradflow can combine gradients across ranks."
            )
        if fsdp2 is not None and isinstance(module, fsdp2):
            scope = "fsdp2"
    if compiled:
        shown = ", ".join(n or "(the model)" for n in compiled[:4]) + (", ..." if len(compiled) > 4 else "")
        notes.append(f"torch.compile: {len(compiled)} compiled module(s) ({shown}) measured eagerly "
                     "(torch.compiler.set_stance('force_eager')); gradients are the same function, computed "
                     "without the compiled kernels")
    if scope != "local":
        what = "DDP" if scope == "ddp" else "FSDP2"
        notes.append(f"{what} on {world_size} ranks ({backend}): global numbers, the norm of the gradient averaged "
                     "over ranks that the optimizer sees; one batch = the union of the ranks' local batches")
    elif world_size > 1:
        notes.append(f"torch.distributed has {world_size} ranks but the model is neither DDP nor FSDP2: these are "
                     f"rank {rank}'s local numbers, measured on its own batches only")
        warnings.warn(
            f"gradflow: rank {rank} of {world_size} measures a plain model on its own batches; the numbers are "
            "local to this rank. Wrap the model in DDP or FSDP2 (fully_shard) for global numbers.",
            LocalNumbersWarning, stacklevel=3,
        )
    return Runtime(model=model, aliases=aliases, compiled=compiled, scope=scope, world_size=world_size,
                   rank=rank, backend=backend, outer=outer, notes=notes)
