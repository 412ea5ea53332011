"""The subject of a diagnosis: a model, its loss, a source of batches, named branches and targets."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from torch import nn

from .errors import SubjectError
from .select import SelectorLike, describe_selector, parameters_of, select_modules

AblationMode = Literal["zero", "identity", "scale"]
LossFn = Callable[[nn.Module, Any], Any]


@dataclass(frozen=True)
class Branch:
    """A named group of modules whose contribution can be switched off.

    ``mode``: ``"zero"`` replaces the modules' outputs by zeros (for residual branches ``x + f(x)``),
    ``"identity"`` passes the input through (for in-line modules), ``"scale"`` multiplies the output
    by ``scale`` (``scale=0`` is the same as ``"zero"``).
    """

    selector: SelectorLike
    mode: AblationMode = "zero"
    scale: float | None = None

    def __post_init__(self) -> None:
        if self.mode not in ("zero", "identity", "scale"):
            raise SubjectError(
                f"branch mode {self.mode!r} is unknown; use 'zero', 'identity' or 'scale' (with scale=s)."
            )
        if self.mode == "scale" and self.scale is None:
            raise SubjectError("branch mode 'scale' needs a scale value, e.g. Branch(sel, 'scale', scale=0.1).")
        if self.mode != "scale" and self.scale is not None:
            object.__setattr__(self, "mode", "scale")

    def describe(self) -> dict[str, Any]:
        """JSON-ready description for run records."""
        return {"selector": describe_selector(self.selector), "mode": self.mode, "scale": self.scale}


@dataclass(frozen=True)
class Target:
    """A named group of trainable parameters whose gradient norm is measured.

    The group's norm is the L2 norm over all its parameters' gradients; each matched module also gets
    its own row in the per-module breakdown.
    """

    selector: SelectorLike

    def describe(self) -> dict[str, Any]:
        """JSON-ready description for run records."""
        return {"selector": describe_selector(self.selector)}


BatchSource = Sequence[Any] | Callable[[int], Any] | Iterable[Any]


class _BatchCache:
    """Uniform indexed access to a list, an ``index -> batch`` function or a one-shot iterable."""

    def __init__(self, source: BatchSource) -> None:
        self._source = source
        self._iterator: Iterator[Any] | None = None
        self._cache: list[Any] = []

    def __len__(self) -> int:
        if isinstance(self._source, Sequence):
            return len(self._source)
        raise TypeError("unsized batch source")

    def sized(self) -> bool:
        return isinstance(self._source, Sequence)

    def get(self, index: int) -> Any:
        source = self._source
        if isinstance(source, Sequence):
            if index >= len(source):
                raise SubjectError(
                    f"asked for batch {index + 1} but the subject has only {len(source)} batches; "
                    f"pass batches={len(source)} or fewer, or give more batches."
                )
            return source[index]
        if callable(source):
            return source(index)
        if self._iterator is None:
            self._iterator = iter(source)
        while len(self._cache) <= index:
            try:
                self._cache.append(next(self._iterator))
            except StopIteration:
                raise SubjectError(
                    f"the batch iterable ran out after {len(self._cache)} batches but batch {index + 1} "
                    "was asked for; ask for fewer batches or give a longer source."
                ) from None
        return self._cache[index]


def _as_branch(name: str, value: Any) -> Branch:
    if isinstance(value, Branch):
        return value
    if isinstance(value, Target):
        raise SubjectError(f"branch {name!r} is given as a gradflow.Target; a branch is a Branch(selector, mode) "
                           "or a selector (did you swap branches= and targets=?).")
    return Branch(value)


def _as_target(name: str, value: Any) -> Target:
    if isinstance(value, Target):
        return value
    if isinstance(value, Branch):
        raise SubjectError(f"target {name!r} is given as a gradflow.Branch; a target is a Target(selector) or a "
                           "selector (did you swap branches= and targets=?).")
    return Target(value)


@dataclass
class Subject:
    """What is diagnosed.

    Args:
        model: the model; a ``torch.compile``, DDP or DataParallel wrapper is taken off (``wrapped_model``
            keeps what was given, ``model`` is the module the passes run on).
        loss_fn: ``loss_fn(model, batch) -> scalar tensor``; it must call the ``model`` it is given.
        batches: a list, an ``index -> batch`` function or an iterable.
        branches: names -> selectors or :class:`Branch` (not :class:`Target`).
        targets: names -> selectors or :class:`Target` (not :class:`Branch`).
        name, preset, config: recorded verbatim in run records.
        default_branches, default_targets, default_batches: what ``compare`` uses when the caller names none
            (all branches / all targets / every batch of a sized source otherwise); ``default_batches`` may
            be ``"auto"``.
    """

    model: nn.Module
    loss_fn: LossFn
    batches: BatchSource
    branches: Mapping[str, Any] = field(default_factory=dict)
    targets: Mapping[str, Any] = field(default_factory=dict)
    name: str = "custom"
    preset: str | None = None
    config: Mapping[str, Any] = field(default_factory=dict)
    default_branches: Sequence[str] | None = None
    default_targets: Sequence[str] | None = None
    default_batches: int | str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.model, nn.Module):
            raise SubjectError(f"subject model must be a torch.nn.Module, got {type(self.model).__name__}.")
        from .runtime import unwrap

        #: the model as given (possibly torch.compile'd or DDP-wrapped); ``model`` is the module passes run on.
        self.wrapped_model = self.model
        self.model, self.aliases = unwrap(self.model)
        if not callable(self.loss_fn):
            raise SubjectError("subject loss_fn must be callable as loss_fn(model, batch) -> scalar tensor.")
        self.branches = {str(k): _as_branch(k, v) for k, v in dict(self.branches).items()}
        self.targets = {str(k): _as_target(k, v) for k, v in dict(self.targets).items()}
        self._batch_cache = _BatchCache(self.batches)

    def batch(self, index: int) -> Any:
        """The batch at ``index`` (0-based)."""
        return self._batch_cache.get(index)

    def available_batches(self) -> int | None:
        """How many batches the source holds, or ``None`` for unbounded sources."""
        return len(self._batch_cache) if self._batch_cache.sized() else None

    def branch(self, name: str) -> Branch:
        """The branch called ``name``; an unknown name raises an error listing the branches."""
        return _lookup(self.branches, name, "branch")

    def target(self, name: str) -> Target:
        """The target called ``name``; an unknown name raises an error listing the targets."""
        return _lookup(self.targets, name, "target")

    def branch_modules(self, name: str) -> list[tuple[str, nn.Module]]:
        """Modules of branch ``name``."""
        return select_modules(self.model, self.branch(name).selector, aliases=self.aliases)

    def target_modules(self, name: str) -> list[tuple[str, nn.Module]]:
        """Modules of target ``name`` that own at least one trainable parameter."""
        return select_modules(self.model, self.target(name).selector, aliases=self.aliases)

    def target_parameters(self, name: str) -> list[tuple[str, nn.Parameter]]:
        """Trainable parameters of target ``name``; raises if there are none."""
        modules = self.target_modules(name)
        params = parameters_of(self.model, modules)
        if not params:
            frozen = parameters_of(self.model, modules, trainable_only=False)
            what = (
                f"its {len(frozen)} parameters all have requires_grad=False"
                if frozen
                else "its modules own no parameters"
            )
            raise SubjectError(
                f"target {name!r} ({describe_selector(self.target(name).selector)}, "
                f"{len(modules)} modules) has no trainable parameter: {what}. Point the target at "
                "trainable modules (e.g. adapters), or unfreeze them before probing."
            )
        return params


def _lookup(table: Mapping[str, Any], name: str, kind: str) -> Any:
    if name in table:
        return table[name]
    plural = "branches" if kind == "branch" else f"{kind}s"
    known = ", ".join(sorted(table)) or "(none defined)"
    raise SubjectError(
        f"unknown {kind} {name!r}. The subject defines these {plural}: {known}. "
        f"Use one of them, or add the {kind} to the subject."
    )
