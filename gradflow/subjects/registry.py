"""Which subjects gradflow may build, and building them.

A probe spec and the CLI's ``--subject`` name a subject; they must never become a way to call arbitrary
code (``name = "os:system"``). gradflow builds only:

1. **built-in** subjects (``aaclip``);
2. subjects **registered by installed packages** through the ``gradflow.subjects`` entry-point group
   (``[project.entry-points."gradflow.subjects"] mymodel = "mypkg.diag:make_subject"``);
3. **user factories marked** with :func:`subject_factory` and named as ``module.path:factory``. The module is
   found without importing it (the spec's folder and the current folder are searched after the installed
   packages, never before them), its source is read to check that ``factory`` is a top-level function
   decorated with ``@subject_factory``, and only then is it imported — and the marker checked again. The
   folder is on ``sys.path`` (at the end) only while the module is imported and its factory runs.

Anything else is refused with a :class:`SubjectError` that says how to register the factory. A factory that
raises (or a module that does not import) is reported as bad input with the error's type, message and
``file:line``.
"""

from __future__ import annotations

import ast
import contextlib
import importlib
import importlib.metadata
import importlib.util
import inspect
import sys
import traceback
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

from ..errors import GradflowError, SubjectError
from ..subject import Subject

BUILTIN = {
    "aaclip": "gradflow.subjects.aaclip:make_subject",
}
ENTRY_POINT_GROUP = "gradflow.subjects"
MARKER = "__gradflow_subject__"

F = TypeVar("F", bound=Callable[..., Any])


def subject_factory(func: F) -> F:
    """Mark ``func`` as a subject factory that probe specs and ``--subject module:factory`` may call.

    Args:
        func: a function returning a :class:`gradflow.Subject` (it may take ``preset``, ``overrides``,
            ``seed``, ``weights``... as keyword arguments).

    Returns:
        ``func`` itself, marked.

    >>> import gradflow as gf
    >>> @gf.subject_factory
    ... def make_subject(preset=None, seed=0, overrides=None) -> gf.Subject: ...
    """
    setattr(func, MARKER, True)
    return func


def _how_to_register(name: str) -> str:
    module, _, attr = name.partition(":")
    return (f"To make {name!r} usable, mark the factory in {module or 'your module'}: `import gradflow as gf` and "
            f"`@gf.subject_factory` above `def {attr or 'make_subject'}(...)`; or register it from an installed "
            f"package under the entry-point group {ENTRY_POINT_GROUP!r}.")


def entry_points() -> dict[str, Any]:
    """Subjects registered by installed packages: ``{name: entry point}``."""
    return {ep.name: ep for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}


def available() -> list[str]:
    """Names of the built-in and installed subjects."""
    return sorted({*BUILTIN, *entry_points()})


# ------------------------------------------------------------------------------- locating user code
def _module_file(directory: Path, parts: list[str]) -> Path | None:
    candidate = directory.joinpath(*parts)
    for path in (candidate.with_suffix(".py"), candidate / "__init__.py"):
        if path.is_file():
            return path
    return None


def locate_module(dotted: str, roots: Iterable[Path] = ()) -> tuple[Path, Path | None] | None:
    """Find the source file of module ``dotted`` without importing it (nor its parent packages).

    Installed packages and ``sys.path`` come first; then ``roots`` (the spec's folder, the current folder).
    Returns ``(file, root)`` — ``root`` is the folder to add to ``sys.path`` for a module found only under
    ``roots`` (``None`` when it is importable as it is) — or ``None``.
    """
    parts = dotted.split(".")
    if not all(part.isidentifier() for part in parts):
        return None
    try:
        spec = importlib.util.find_spec(parts[0])  # a top-level name: nothing is imported to find it
    except (ImportError, ValueError):
        spec = None
    if spec is not None:
        if len(parts) == 1:
            return (Path(spec.origin), None) if spec.origin and spec.has_location else None
        for location in spec.submodule_search_locations or []:
            found = _module_file(Path(location), parts[1:])
            if found is not None:
                return found, None
        return None
    for root in roots:
        found = _module_file(Path(root), parts)
        if found is not None:
            return found, Path(root)
    return None


def _importable_without_source(dotted: str) -> bool:
    """Whether the top-level package of ``dotted`` exists (built-in, frozen or without a source file)."""
    try:
        return importlib.util.find_spec(dotted.split(".")[0]) is not None
    except (ImportError, ValueError):
        return False


def _decorator_name(node: ast.expr) -> str | None:
    if isinstance(node, ast.Call):
        node = node.func
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return None


def marked_in_source(path: Path, function: str) -> bool:
    """Whether ``path`` defines a top-level ``function`` decorated with ``@subject_factory`` (read, not run)."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    except (OSError, UnicodeDecodeError, SyntaxError, ValueError):
        return False
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name == function:
            return any(_decorator_name(d) == "subject_factory" for d in node.decorator_list)
    return False


def _summarise(exc: BaseException) -> str:
    """``TypeError: message (file.py:12)`` for the innermost frame of the user's error."""
    where = ""
    if isinstance(exc, SyntaxError) and exc.filename:
        where = f" ({exc.filename}:{exc.lineno})"
    else:
        frames = traceback.extract_tb(exc.__traceback__)
        user = [f for f in frames if "importlib" not in f.filename and "/gradflow/subjects/registry" not in f.filename]
        if user:
            where = f" ({user[-1].filename}:{user[-1].lineno})"
    message = str(exc).strip() or "(no message)"
    return f"{type(exc).__name__}: {message}{where}"


def resolve(name: str, roots: Iterable[Path] = ()) -> tuple[Callable[..., Any], Path | None]:
    """The factory of subject ``name`` and its source file, under the rules in the module docstring."""
    if name in BUILTIN:
        module_name, _, attr = BUILTIN[name].partition(":")
        module = importlib.import_module(module_name)
        return getattr(module, attr), Path(module.__file__ or "")
    installed = entry_points()
    if name in installed:
        try:
            factory = installed[name].load()
        except Exception as exc:  # noqa: BLE001 - an installed plugin that fails to import is the user's to fix
            raise SubjectError(f"subject {name!r} (entry point {installed[name].value!r}) cannot be loaded: "
                               f"{_summarise(exc)}.") from None
        return factory, None
    if ":" not in name:
        raise SubjectError(
            f"unknown subject {name!r}. Built-in and installed subjects: {', '.join(available()) or '(none)'}; for "
            "your own model give module.path:factory with the factory marked @gradflow.subject_factory.")
    module_name, _, attr = name.partition(":")
    if not attr.isidentifier():
        raise SubjectError(f"subject {name!r}: {attr!r} is not a function name (module.path:factory). "
                           + _how_to_register(name))
    located = locate_module(module_name, roots)
    if located is None and _importable_without_source(module_name):
        raise SubjectError(f"subject {name!r} is not a registered subject factory: {module_name!r} is a built-in or "
                           "frozen module with no source to check, and gradflow calls nothing that a spec or the "
                           "command line names unless it is marked. " + _how_to_register(name))
    if located is None:
        searched = ", ".join(str(r) for r in roots) or "(no folders)"
        raise SubjectError(f"subject {name!r}: module {module_name!r} was not found among the installed packages nor "
                           f"in {searched}. Check the import path.")
    path, root = located
    if not marked_in_source(path, attr):
        raise SubjectError(f"subject {name!r} is not a registered subject factory: {path} has no top-level function "
                           f"{attr!r} decorated with @gradflow.subject_factory, and gradflow calls nothing else that "
                           "a spec or the command line names. " + _how_to_register(name))
    stale = sys.modules.get(module_name)
    if stale is not None and Path(getattr(stale, "__file__", "") or "").resolve() != path.resolve():
        del sys.modules[module_name]  # a module of that name from another folder: import the one located here
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # noqa: BLE001 - the user's module failed to import: bad input, summarised
        raise SubjectError(f"subject {name!r}: importing {module_name!r} failed: {_summarise(exc)}.") from None
    factory = getattr(module, attr, None)
    if factory is None or not getattr(factory, MARKER, False):
        raise SubjectError(f"subject {name!r}: {module_name}.{attr} is not marked @gradflow.subject_factory at run "
                           "time. " + _how_to_register(name))
    return factory, Path(getattr(module, "__file__", None) or path)


def subject_source(name: str, roots: Iterable[Path] = ()) -> Path | None:
    """The source file of subject ``name``'s factory, found without importing it (None if unknown)."""
    if name in BUILTIN:
        module_name = BUILTIN[name].partition(":")[0]
        located = locate_module(module_name)
    elif ":" in name:
        located = locate_module(name.partition(":")[0], roots)
    else:
        return None
    return located[0] if located else None


def load_subject(name: str, *, roots: Iterable[Path] = (), **options: Any) -> Subject:
    """Build the subject ``name``, passing only the options its factory accepts.

    Args:
        name: a built-in or installed subject name, or ``module.path:factory`` of a marked factory.
        roots: folders to look for a user module in after the installed packages (the spec's folder, the
            current folder).
        **options: factory arguments (``preset``, ``overrides``, ``weights``, ``seed``...); ``None`` and empty
            mappings are left out; a non-empty option the factory does not take is an error.

    Raises:
        SubjectError: the subject is unknown or not registered, its factory fails, or returns no Subject.
    """
    with _project_on_path(name, roots):
        return _build(name, roots, options)


@contextlib.contextmanager
def _project_on_path(name: str, roots: Iterable[Path]) -> Iterator[None]:
    """While a user module found only under ``roots`` is imported and its factory runs, its folder is on
    ``sys.path`` — appended, so it never shadows an installed module — and afterwards it is removed again."""
    root = None
    if ":" in name and name not in BUILTIN:
        located = locate_module(name.partition(":")[0], roots)
        root = located[1] if located else None
    added = root is not None and str(root) not in sys.path
    if added:
        sys.path.append(str(root))
    try:
        yield
    finally:
        if added and str(root) in sys.path:
            sys.path.remove(str(root))


def _build(name: str, roots: Iterable[Path], options: Mapping[str, Any]) -> Subject:
    factory, _ = resolve(name, roots)
    given = {k: v for k, v in options.items() if v is not None and not (isinstance(v, Mapping) and not v)}
    if not callable(factory):
        raise SubjectError(f"{name!r} is not a factory function returning a gradflow.Subject.")
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        params = {}
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    unknown = [k for k in given if k not in params and not takes_any]
    if unknown:
        raise SubjectError(
            f"subject factory {name!r} does not accept {', '.join('--' + k for k in unknown)}; its parameters "
            f"are: {', '.join(params) or '(none)'}."
        )
    try:
        subject = factory(**given)
    except GradflowError:
        raise
    except Exception as exc:  # noqa: BLE001 - the factory's own failure is bad input, summarised for the user
        raise SubjectError(f"subject factory {name!r} raised {_summarise(exc)}.") from None
    if not isinstance(subject, Subject):
        raise SubjectError(
            f"subject factory {name!r} returned a {type(subject).__name__}; it must return a gradflow.Subject."
        )
    return subject
