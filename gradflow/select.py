"""Selectors: choose modules of a model by glob, regex, type, predicate or a list of these.

Glob syntax works on dotted qualified names, one segment at a time: ``*`` matches within one name
segment (``blocks.*.adapter`` matches ``blocks.3.adapter`` but not ``blocks.3.sub.adapter``), ``**``
matches any number of segments, ``?`` and ``[...]`` work as in :mod:`fnmatch`. A string starting with
``re:`` is a regular expression that must match the whole name.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Iterable, Sequence
from typing import TypeAlias

from torch import nn

from .errors import SelectorError

SelectorLike: TypeAlias = "str | type | Callable[[str, nn.Module], bool] | Sequence[SelectorLike]"

_REGEX_PREFIX = "re:"


def _segment_regex(segment: str) -> str:
    out, i = [], 0
    while i < len(segment):
        char = segment[i]
        if char == "*":
            out.append("[^.]*")
        elif char == "?":
            out.append("[^.]")
        elif char == "[" and "]" in segment[i + 1 :]:
            close = segment.index("]", i + 1)
            body = segment[i + 1 : close]
            out.append("[" + ("^" + body[1:] if body.startswith("!") else body) + "]")
            i = close
        else:
            out.append(re.escape(char))
        i += 1
    return "".join(out)


def _glob_to_regex(pattern: str) -> re.Pattern[str]:
    """Compile a dotted glob; the regex is matched against ``"." + name``."""
    body = "".join(
        r"(?:\.[^.]+)*" if segment == "**" else r"\." + _segment_regex(segment)
        for segment in pattern.split(".")
    )
    return re.compile(body + r"\Z")


class CompiledPattern:
    """A module-name pattern (dotted glob or ``re:`` regex) with ``fullmatch(name)`` like a compiled regex."""

    def __init__(self, pattern: str) -> None:
        self.pattern = pattern
        if pattern.startswith(_REGEX_PREFIX):
            try:
                self._regex = re.compile(pattern[len(_REGEX_PREFIX):])
            except re.error as exc:
                raise SelectorError(
                    f"selector {pattern!r} is not a valid regular expression ({exc}). "
                    "Fix the expression, or drop the 're:' prefix to use a glob."
                ) from None
            self._prefix = ""
        else:
            if not pattern.strip() or any(not part for part in pattern.split(".")):
                raise SelectorError(
                    f"selector {pattern!r} is not a valid glob: empty name segment. Use dotted names with '*' "
                    "(one segment), '**' (any number of segments) or 're:<regex>'."
                )
            self._regex = _glob_to_regex(pattern)
            self._prefix = "."

    def fullmatch(self, name: str) -> bool:
        """Whether the whole qualified module ``name`` matches."""
        if self._prefix:
            return self._regex.match(self._prefix + name) is not None
        return self._regex.fullmatch(name) is not None


def compile_glob(pattern: str) -> CompiledPattern:
    """Compile a module-name pattern (glob with ``*``/``**`` per dotted segment, or ``re:<regex>``).

    Args:
        pattern: the glob or ``re:`` regular expression.

    Returns:
        An object whose ``fullmatch(name)`` tells whether a qualified module name matches.

    Raises:
        SelectorError: the regex does not compile or the glob has an empty segment.
    """
    return CompiledPattern(pattern)


def validate_selector(selector: SelectorLike) -> None:
    """Raise :class:`SelectorError` when ``selector`` is malformed (checked without a model)."""
    _matcher(selector)


def describe_selector(selector: SelectorLike) -> str:
    """A short human-readable form of ``selector`` for messages and run records."""
    if isinstance(selector, str):
        return selector
    if isinstance(selector, type):
        return f"type:{selector.__module__}.{selector.__qualname__}"
    if isinstance(selector, Sequence):
        return "[" + ", ".join(describe_selector(s) for s in selector) + "]"
    return f"predicate:{getattr(selector, '__qualname__', repr(selector))}"


def _matcher(selector: SelectorLike) -> Callable[[str, nn.Module], bool]:
    if isinstance(selector, str):
        compiled = CompiledPattern(selector)
        return lambda name, _module: compiled.fullmatch(name)
    if isinstance(selector, type):
        if not issubclass(selector, nn.Module):
            raise SelectorError(
                f"type selector {selector.__qualname__} is not an nn.Module subclass; "
                "pass a module class such as torch.nn.Linear."
            )
        return lambda _name, module: isinstance(module, selector)
    if isinstance(selector, Sequence):
        if not selector:
            raise SelectorError("an empty list of selectors selects nothing; give at least one selector.")
        matchers = [_matcher(s) for s in selector]
        return lambda name, module: any(m(name, module) for m in matchers)
    if callable(selector):
        return selector
    raise SelectorError(
        f"cannot use {selector!r} (a {type(selector).__name__}) as a selector; use a glob string, "
        "'re:<regex>', an nn.Module subclass, a predicate (name, module) -> bool, or a list of these."
    )


#: Name segment torch.compile's wrapper (``OptimizedModule``) puts in front of the module it compiled.
COMPILE_SEGMENT = "_orig_mod"


def canonical_name(name: str) -> str:
    """``name`` without torch.compile's ``_orig_mod`` segments: the name in the uncompiled model."""
    if COMPILE_SEGMENT not in name:
        return name
    return ".".join(part for part in name.split(".") if part != COMPILE_SEGMENT)


def is_compile_wrapper(module: nn.Module) -> bool:
    """Whether ``module`` is torch.compile's ``OptimizedModule`` wrapper (its forward runs ``_orig_mod``)."""
    # the type name first: hasattr on a Module raises and catches an AttributeError, slow over every module
    return type(module).__name__ == "OptimizedModule" and hasattr(module, COMPILE_SEGMENT)


def named_modules(model: nn.Module) -> list[tuple[str, str, nn.Module]]:
    """``(canonical name, raw name, module)`` of every module, compile wrappers left out.

    The canonical name drops ``_orig_mod`` segments, so names read as in the uncompiled model whether the
    model (or a submodule) was wrapped by ``torch.compile`` or not.
    """
    return [(canonical_name(name), name, module) for name, module in model.named_modules(remove_duplicate=False)
            if not is_compile_wrapper(module)]


def _all_named_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(canonical, module) for canonical, _, module in named_modules(model)]


def close_names(query: str, names: Iterable[str], limit: int = 5) -> list[str]:
    """Names in ``names`` that look most like ``query`` (for 'did you mean' messages)."""
    names = list(names)
    literal = query.replace("re:", "").replace("**", "").replace("*", "").strip(".")
    found = difflib.get_close_matches(literal, names, n=limit, cutoff=0.35)
    if len(found) < limit:
        # Names that share the longest literal prefix of the pattern are good suggestions too.
        prefix = re.split(r"[*?\[]", query.replace("re:", ""), maxsplit=1)[0].rstrip(".")
        while prefix and len(found) < limit:
            extra = [n for n in names if n.startswith(prefix) and n not in found]
            if extra:
                found.extend(extra[: limit - len(found)])
                break
            prefix = prefix.rpartition(".")[0]
    return found


def select_modules(
    model: nn.Module, selector: SelectorLike, *, aliases: Sequence[str] = ()
) -> list[tuple[str, nn.Module]]:
    """Return ``(qualified_name, module)`` for every module of ``model`` matched by ``selector``.

    Names are canonical (see :func:`canonical_name`); a selector may also be written with the raw
    ``_orig_mod`` names of a compiled model, or with one of ``aliases`` in front (the name of a wrapper the
    model was taken out of, e.g. ``"module"`` for DistributedDataParallel).

    Args:
        model: the model to search.
        selector: a glob, ``re:`` regex, module type, predicate ``(name, module) -> bool``, or a list of these.
        aliases: wrapper names a selector may start with.

    Returns:
        ``(name, module)`` pairs in the model's module order; a module reachable under several names appears
        once, under the first matching name.

    Raises:
        SelectorError: the selector is malformed or matches nothing (the message names close matches).
    """
    matches = _matcher(selector)
    seen: set[int] = set()
    selected: list[tuple[str, nn.Module]] = []
    named = named_modules(model)
    for name, raw, module in named:
        if id(module) in seen:
            continue
        spellings = {name, raw, *(f"{alias}.{name}" if name else alias for alias in aliases)}
        if any(matches(spelling, module) for spelling in spellings):
            seen.add(id(module))
            selected.append((name, module))
    if not selected:
        names = [n for n, _, _ in named if n]
        hint = close_names(describe_selector(selector), names)
        hint_text = ("Closest module names: " + ", ".join(hint) + ". ") if hint else ""
        raise SelectorError(
            f"selector {describe_selector(selector)!r} matched no module of {type(model).__name__} "
            f"({len(names)} named modules). {hint_text}"
            "Run `gradflow list` to see every module; in globs '*' matches one name segment, "
            "'**' any number of segments, and 're:' starts a regular expression."
        )
    return selected


def parameters_of(
    model: nn.Module, modules: Iterable[tuple[str, nn.Module]], trainable_only: bool = True
) -> list[tuple[str, nn.Parameter]]:
    """Unique parameters of ``modules`` (recursively) with their qualified names in ``model``.

    Args:
        model: the model the names are taken from.
        modules: ``(name, module)`` pairs, e.g. from :func:`select_modules`.
        trainable_only: leave out parameters with ``requires_grad=False``.

    Returns:
        ``(qualified name, parameter)`` pairs; a parameter shared by several modules appears once, under its
        first name in ``model``.
    """
    qualified = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        qualified.setdefault(id(param), canonical_name(name))
    seen: set[int] = set()
    result: list[tuple[str, nn.Parameter]] = []
    for _, module in modules:
        for param in module.parameters():
            if id(param) in seen or (trainable_only and not param.requires_grad):
                continue
            seen.add(id(param))
            result.append((qualified.get(id(param), "?"), param))
    return result


def is_container(module: nn.Module) -> bool:
    """Whether ``module`` only holds other modules and is never called (``ModuleList``, ``ModuleDict``...).

    Such a module has no forward of its own, so a hook on it never fires: peft's ``lora_B`` is a
    ``ModuleDict({"default": Linear})`` whose ``Linear`` is what runs.
    """
    return type(module).forward is nn.Module.forward


def resolve_containers(
    modules: Iterable[tuple[str, nn.Module]],
) -> tuple[list[tuple[str, nn.Module]], list[str]]:
    """Replace container modules (see :func:`is_container`) by the modules inside them that can run.

    Returns the resolved ``(name, module)`` list and a sentence saying what was replaced (for records).
    """
    resolved: list[tuple[str, nn.Module]] = []
    replaced: list[tuple[str, nn.Module, list[tuple[str, nn.Module]]]] = []
    seen: set[int] = set()
    for name, module in modules:
        inner = _callable_children(name, module) if is_container(module) else [(name, module)]
        if inner != [(name, module)]:
            replaced.append((name, module, inner))
        for child_name, child in inner:
            if id(child) not in seen:
                seen.add(id(child))
                resolved.append((child_name, child))
    if not replaced:
        return resolved, []
    name, module, inner = replaced[0]
    kinds = ", ".join(sorted({type(m).__name__ for _, m, _ in replaced}))
    example = f"{name} -> {', '.join(n for n, _ in inner[:3])}{', ...' if len(inner) > 3 else ''}"
    return resolved, [f"{len(replaced)} selected container module(s) ({kinds}: never called, so a hook on them "
                      f"would never fire) resolved to the modules inside them, e.g. {example}"]


def _callable_children(name: str, module: nn.Module) -> list[tuple[str, nn.Module]]:
    out: list[tuple[str, nn.Module]] = []
    for child_name, child in module.named_children():
        qualified = f"{name}.{child_name}" if name else child_name
        if is_compile_wrapper(child):
            child = getattr(child, COMPILE_SEGMENT)
        if is_container(child):
            out.extend(_callable_children(qualified, child))
        else:
            out.append((qualified, child))
    return out
