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
        if selector.startswith(_REGEX_PREFIX):
            try:
                compiled = re.compile(selector[len(_REGEX_PREFIX):])
            except re.error as exc:
                raise SelectorError(
                    f"selector {selector!r} is not a valid regular expression ({exc}). "
                    "Fix the expression, or drop the 're:' prefix to use a glob."
                ) from None
            return lambda name, _module: compiled.fullmatch(name) is not None
        compiled = _glob_to_regex(selector)
        return lambda name, _module: compiled.match("." + name) is not None
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


def _all_named_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return list(model.named_modules(remove_duplicate=False))


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


def select_modules(model: nn.Module, selector: SelectorLike) -> list[tuple[str, nn.Module]]:
    """Return ``(qualified_name, module)`` for every module of ``model`` matched by ``selector``.

    Results follow the model's module order; a module reachable under several names appears once,
    under the first matching name. Raises :class:`SelectorError` naming close matches when nothing
    matches.
    """
    matches = _matcher(selector)
    seen: set[int] = set()
    selected: list[tuple[str, nn.Module]] = []
    named = _all_named_modules(model)
    for name, module in named:
        if id(module) in seen:
            continue
        if matches(name, module):
            seen.add(id(module))
            selected.append((name, module))
    if not selected:
        names = [n for n, _ in named if n]
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

    A parameter shared by several modules appears once, under its first name in ``model``.
    """
    qualified = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        qualified.setdefault(id(param), name)
    seen: set[int] = set()
    result: list[tuple[str, nn.Parameter]] = []
    for _, module in modules:
        for param in module.parameters():
            if id(param) in seen or (trainable_only and not param.requires_grad):
                continue
            seen.add(id(param))
            result.append((qualified.get(id(param), "?"), param))
    return result
