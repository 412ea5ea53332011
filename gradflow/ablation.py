"""Ablation: switch branches off (or scale them) for a pass with forward hooks.

The branch modules still run, so they consume the RNG (dropout) exactly as in the un-ablated pass and
later modules see the same random stream; only their outputs are replaced.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from ._tree import map_tensors
from .errors import AblationError
from .select import select_modules
from .subject import Branch


def _first_input(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    if args:
        return args[0]
    for value in kwargs.values():
        if isinstance(value, torch.Tensor):
            return value
    return None


def _identity_output(name: str, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
    source = _first_input(args, kwargs)
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


def _make_hook(name: str, branch: Branch):
    if branch.mode == "identity":
        def hook(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
            return _identity_output(name, module, args, kwargs, output)
    elif branch.mode == "scale" and branch.scale != 0:
        factor = float(branch.scale)

        def hook(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
            return map_tensors(output, lambda t: t * factor if t.is_floating_point() else t)
    else:
        def hook(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
            # Fresh zeros carry no graph: the branch's parameters get no gradient ("no grad", not 0.0).
            return map_tensors(output, lambda t: torch.zeros_like(t) if t.is_floating_point() else t)
    return hook


@contextmanager
def ablate(model: nn.Module, branches: Mapping[str, Branch] | Branch) -> Iterator[list[str]]:
    """Switch off (or scale) every branch in ``branches`` inside the context.

    Yields the qualified names of the ablated modules. Hooks are removed on exit, also on exceptions.
    """
    if isinstance(branches, Branch):
        branches = {"branch": branches}
    handles = []
    ablated: list[str] = []
    try:
        for branch in branches.values():
            for name, module in select_modules(model, branch.selector):
                handles.append(module.register_forward_hook(_make_hook(name, branch), with_kwargs=True))
                ablated.append(name)
        yield ablated
    finally:
        for handle in handles:
            handle.remove()
