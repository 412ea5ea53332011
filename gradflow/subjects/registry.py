"""Find and build subjects by name (built-in) or import path (``mypkg.diag:make_subject``)."""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Mapping
from typing import Any

from ..errors import SubjectError
from ..subject import Subject

BUILTIN = {
    "aaclip": "gradflow.subjects.aaclip:make_subject",
}


def _resolve_factory(spec: str) -> Any:
    path = BUILTIN.get(spec, spec)
    if ":" not in path:
        raise SubjectError(
            f"unknown subject {spec!r}. Built-in subjects: {', '.join(sorted(BUILTIN))}; for your own "
            "model give an import path to a factory, e.g. --subject mypkg.diag:make_subject."
        )
    module_name, _, attr = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise SubjectError(
            f"cannot import module {module_name!r} for subject {spec!r}: {exc}. Check the import path and "
            "that the package is installed (or run from the folder that contains it)."
        ) from None
    factory = module
    for part in attr.split("."):
        if not hasattr(factory, part):
            public = sorted(n for n in dir(module) if not n.startswith("_") and callable(getattr(module, n)))
            raise SubjectError(
                f"module {module_name!r} has no attribute {attr!r}. Callables it defines: "
                f"{', '.join(public[:12]) or '(none)'}."
            )
        factory = getattr(factory, part)
    return factory


def load_subject(spec: str, **options: Any) -> Subject:
    """Build the subject named ``spec``, passing only the options its factory accepts.

    ``options`` (e.g. ``preset``, ``overrides``, ``weights``, ``seed``) that are ``None`` are left
    out; a non-``None`` option the factory does not take is an error rather than silently ignored.
    """
    factory = _resolve_factory(spec)
    given = {k: v for k, v in options.items() if v is not None and not (isinstance(v, Mapping) and not v)}
    if isinstance(factory, Subject):
        if given:
            raise SubjectError(f"subject {spec!r} is a ready Subject object; it takes no options ({sorted(given)}).")
        return factory
    if not callable(factory):
        raise SubjectError(f"{spec!r} is neither a Subject nor a factory function returning one.")
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        params = {}
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    unknown = [k for k in given if k not in params and not takes_any]
    if unknown:
        raise SubjectError(
            f"subject factory {spec!r} does not accept {', '.join('--' + k for k in unknown)}; its parameters "
            f"are: {', '.join(params) or '(none)'}."
        )
    subject = factory(**given)
    if not isinstance(subject, Subject):
        raise SubjectError(
            f"subject factory {spec!r} returned a {type(subject).__name__}; it must return a gradflow.Subject."
        )
    return subject
