"""Ablation: switch branches off (or scale them) for a pass with forward hooks, and prove it happened.

The branch modules still run, so they consume the RNG (dropout) exactly as in the un-ablated pass and
later modules see the same random stream; only their outputs are replaced. Every replacement is counted:
:meth:`Ablation.verify` raises :class:`AblationError` for a branch module whose forward never ran (its hook
never fired, so nothing was ablated), naming the modules under it that did run. A measurement with such a
module would report "no effect", which would be false.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from ._tree import map_tensors, tensors_in
from .errors import AblationError
from .select import resolve_containers, select_modules
from .subject import Branch


def _first_input(name: str, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """The input that stands in for the output: the first positional one, ``query`` of an attention module
    called with keywords, or the only tensor keyword; several tensor keywords are ambiguous and refused."""
    if args:
        return args[0]
    if "query" in kwargs and isinstance(module, nn.MultiheadAttention):
        return kwargs["query"]
    tensors = [key for key, value in kwargs.items() if isinstance(value, torch.Tensor)]
    if len(tensors) > 1:
        raise AblationError(
            f"cannot ablate module {name!r} ({type(module).__name__}) in 'identity' mode: it was called with "
            f"the tensors {', '.join(tensors)} as keywords, and gradflow cannot tell which one passes through. "
            "Use mode 'zero' or 'scale' for this branch, or call the module with that tensor first, positionally."
        )
    return kwargs[tensors[0]] if tensors else None


def _identity_output(name: str, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
    source = _first_input(name, module, args, kwargs)
    if not isinstance(source, torch.Tensor):
        raise AblationError(
            f"cannot ablate module {name!r} ({type(module).__name__}) in 'identity' mode: its first input "
            f"is a {type(source).__name__}, not a tensor. Use mode 'zero' or 'scale' for this branch."
        )
    if isinstance(output, torch.Tensor):
        replaced, reference = source, output
    elif isinstance(output, tuple | list) and output and isinstance(output[0], torch.Tensor):
        # (out, aux...) modules such as nn.MultiheadAttention: pass the input through as `out`.
        reference = output[0]
        if hasattr(output, "_fields"):
            replaced = output._replace(**{output._fields[0]: source})
        else:
            replaced = type(output)([source, *output[1:]])
    else:
        raise AblationError(
            f"cannot ablate module {name!r} ({type(module).__name__}) in 'identity' mode: its output is a "
            f"{type(output).__name__}; identity needs a tensor output (or a tuple whose first item is one). "
            "Use mode 'zero' or 'scale' for this branch."
        )
    if reference.shape != source.shape:
        raise AblationError(
            f"cannot ablate module {name!r} ({type(module).__name__}) in 'identity' mode: it maps input shape "
            f"{tuple(source.shape)} to output shape {tuple(reference.shape)}, so its input cannot stand in "
            "for its output. Use mode 'zero' (residual branches) or 'scale' for this branch."
        )
    return replaced


def _differentiable(tensor: torch.Tensor) -> bool:
    return tensor.is_floating_point() or tensor.is_complex()


def _replace_each(name: str, module: nn.Module, output: Any, fn) -> Any:
    """``output`` with ``fn`` applied to every floating or complex tensor in it; refused when there is none
    (an output type torch's pytree cannot see into, such as a dataclass: nothing would be switched off).

    A tuple or list whose first item is a tensor is the ``(output, extras...)`` convention of attention and
    recurrent modules (attention weights, a T5 position bias that later blocks reuse, an LSTM's state): only
    the first item is the branch's contribution, so only it is replaced.
    """
    if isinstance(output, tuple | list) and output and isinstance(output[0], torch.Tensor):
        first = _replace_each(name, module, output[0], fn)
        if hasattr(output, "_fields"):
            return output._replace(**{output._fields[0]: first})
        return type(output)([first, *output[1:]])
    replaced = [0]

    def apply(tensor: torch.Tensor) -> torch.Tensor:
        if not _differentiable(tensor):
            return tensor
        replaced[0] += 1
        return fn(tensor)

    result = map_tensors(output, apply)
    if not replaced[0] and output is not None:
        raise AblationError(
            f"cannot ablate module {name!r} ({type(module).__name__}): its output, a {type(output).__name__}, "
            "holds no floating-point tensor that gradflow can see (torch's pytree sees into tensors, tuples, "
            "lists, dicts and namedtuples, not into dataclasses or other objects), so nothing would be switched "
            "off. Return one of those types, register the type with torch.utils._pytree, or select a module "
            "inside the branch that returns a tensor."
        )
    return result


def _replacement(name: str, branch: Branch):
    if branch.mode == "identity":
        return lambda module, args, kwargs, output: _identity_output(name, module, args, kwargs, output)
    if branch.mode == "scale" and branch.scale != 0:
        factor = float(branch.scale)
        return lambda module, args, kwargs, output: _replace_each(name, module, output, lambda t: t * factor)
    # Fresh zeros carry no graph: the branch's parameters get no gradient ("no grad", not 0.0).
    return lambda module, args, kwargs, output: _replace_each(name, module, output, torch.zeros_like)


def branch_modules(model: nn.Module, branch: Branch, aliases: Sequence[str] = ()) -> tuple[
        list[tuple[str, nn.Module]], list[str]]:
    """The modules a branch hooks (containers that never run resolved to what is inside) and the notes
    saying which containers were resolved."""
    return resolve_containers(select_modules(model, branch.selector, aliases=aliases))


class ForwardCalls:
    """Counts the forward calls of named modules while installed; a context manager.

    A hook's lifetime is this object's ``with`` block: hooks are removed on exit, also on errors.
    """

    def __init__(self, modules: Sequence[tuple[str, nn.Module]]) -> None:
        self.modules = list(dict.fromkeys(modules))
        self.counts: dict[str, int] = {name: 0 for name, _ in self.modules}
        #: calls made while gradient recording was off (torch.no_grad, a reentrant checkpoint's first forward)
        self.no_grad_counts: dict[str, int] = {name: 0 for name, _ in self.modules}
        self._handles: list[Any] = []

    def __enter__(self) -> ForwardCalls:
        for name, module in self.modules:
            self._handles.append(module.register_forward_pre_hook(self._counter(name)))
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _counter(self, name: str):
        def hook(_module: nn.Module, _args: Any) -> None:
            self.counts[name] += 1
            if not torch.is_grad_enabled():
                self.no_grad_counts[name] += 1

        return hook

    def reset(self) -> None:
        """Set every count back to zero (between passes)."""
        for name in self.counts:
            self.counts[name] = 0
            self.no_grad_counts[name] = 0


class Ablation:
    """The hooks that ablate a set of branches, with a count of how often each replaced an output."""

    def __init__(self, model: nn.Module, branches: Mapping[str, Branch], aliases: Sequence[str] = ()) -> None:
        self.model = model
        self.targets: list[tuple[str, str, nn.Module, Branch]] = []  # (branch, module name, module, branch)
        self.notes: list[str] = []
        for branch_name, branch in branches.items():
            modules, notes = branch_modules(model, branch, aliases)
            self.notes += notes
            self.targets += [(branch_name, name, module, branch) for name, module in modules]
        self.calls: dict[str, int] = {name: 0 for _, name, _, _ in self.targets}
        #: modules whose tuple output had more tensors after the first: only the first was replaced
        self.first_only: set[str] = set()
        self._handles: list[Any] = []

    @property
    def module_names(self) -> list[str]:
        """Qualified names of the ablated modules."""
        return [name for _, name, _, _ in self.targets]

    def __enter__(self) -> Ablation:
        try:
            for _, name, module, branch in self.targets:
                self._handles.append(module.register_forward_hook(self._hook(name, branch), with_kwargs=True))
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _hook(self, name: str, branch: Branch):
        replace = _replacement(name, branch)

        def hook(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
            self.calls[name] += 1
            if (isinstance(output, tuple | list) and len(output) > 1 and isinstance(output[0], torch.Tensor)
                    and tensors_in(list(output[1:]))):  # nested too: an LSTM's (out, (h, c))
                self.first_only.add(name)
            return replace(module, args, kwargs, output)

        return hook

    def verify(self, descendant_calls: Mapping[str, int] | None = None) -> None:
        """Raise :class:`AblationError` if an ablated module's forward never ran since the hooks went on.

        ``descendant_calls`` (qualified name -> forward calls in the same pass) lets the message name the
        modules under it that did run.
        """
        idle = [(branch, name, module) for branch, name, module, _ in self.targets if self.calls[name] == 0]
        if not idle:
            return
        branch, name, module = idle[0]
        ran = [n for n, count in (descendant_calls or {}).items() if count and n.startswith(name + ".")]
        under = [f"{name}.{child}" for child, _ in module.named_modules() if child]
        parent = name.rpartition(".")[0]
        siblings = [n for _, n, _, _ in self.targets if n != name and n.rpartition(".")[0] == parent
                    and self.calls[n]]
        if siblings and not ran:  # e.g. peft's lora_B.default idle while lora_B.second (the active adapter) ran
            hint = (f"Modules beside it did run: {', '.join(siblings[:4])}{', ...' if len(siblings) > 4 else ''} "
                    f"(an inactive adapter?). Select only those, e.g. "
                    f"'**.{'.'.join(siblings[0].rsplit('.', 2)[-2:])}'.")
        elif ran:
            hint = (f"Modules under it that did run: {', '.join(ran[:6])}{', ...' if len(ran) > 6 else ''}. "
                    f"Select those instead (e.g. {ran[0]!r}, or a glob such as '**.{ran[0].rsplit('.', 2)[-2]}."
                    f"{ran[0].rsplit('.', 1)[-1]}').")
        elif under:
            hint = (f"None of the {len(under)} modules under it ran either: the branch is not used by this loss "
                    "on this batch, or the model bypasses module calls (a compiled or scripted region, a "
                    "functional call). Check the selector with `gradflow list`.")
        else:
            hint = ("The module is defined but the forward pass never calls it (check the selector with "
                    "`gradflow list`, and that the loss calls the model it is given).")
        others = f" ({len(idle) - 1} more ablated module(s) did not run either)" if len(idle) > 1 else ""
        raise AblationError(
            f"branch {branch!r}: module {name!r} ({type(module).__name__}) never ran in the forward pass, so its "
            f"ablation hook never fired and nothing was switched off{others}. {hint} gradflow does not report a "
            "retention for a branch it could not ablate."
        )


@contextmanager
def ablate(model: nn.Module, branches: Mapping[str, Branch] | Branch) -> Iterator[list[str]]:
    """Switch off (or scale) every branch in ``branches`` inside the context.

    Args:
        model: the model whose modules are hooked.
        branches: ``{name: Branch}`` or one :class:`Branch`.

    Yields:
        The qualified names of the ablated modules. Hooks are removed on exit, also on exceptions.

    Raises:
        AblationError: on a clean exit, when an ablated module's forward never ran inside the context (nothing
            was switched off); or when a module cannot be ablated in the requested mode.
    """
    if isinstance(branches, Branch):
        branches = {"branch": branches}
    with Ablation(model, branches) as ablation:
        yield ablation.module_names
        ablation.verify()
