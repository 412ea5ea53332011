"""Preflight checks: the "before training" checklist of a spec, run as part of ``gradflow check``.

From the gradient-dilution story's checklist:

* **config** — the branch weight parameter exists and has the value the spec says
  (``[preflight] config = {image_cross_attn_weight = 0.1}`` against the subject's config; dotted keys
  reach into nested tables) and the built model really uses it (``model = {"image_cross_attn.scale" =
  0.1}``: a dotted attribute path on the model).
* **trained** — the base adapters were loaded, not left at their initialisation
  (``trained = ["image_adapter"]``). Test: build the subject a second time with a different init seed.
  Parameters drawn from the RNG at construction differ between the two builds; parameters loaded from a
  checkpoint do not. A group with any parameter that changes with the init seed is still at
  initialisation. Needs a factory that takes ``seed`` and draws its init from it. Limitation: parameters
  that are initialised to constants (zeros, ones) cannot be told apart from loaded ones.
* **reachable** — every declared branch is on the gradient path of every target: a (branch, target)
  total row whose norms are identical with and without the branch (status ``no_effect``) fails. A branch
  that cannot affect a target is reported, not counted as a pass.

Every check returns :class:`gradflow.gate.Check` objects; failures do not raise.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Mapping
from typing import Any

from .errors import GradflowError
from .gate import Check
from .verdicts import RowStatus

_MISSING = object()


def _lookup_config(config: Mapping[str, Any], key: str) -> Any:
    if key in config:
        return config[key]
    node: Any = config
    for part in key.split("."):
        if isinstance(node, Mapping) and part in node:
            node = node[part]
        else:
            return _MISSING
    return node


def _same(actual: Any, expected: Any) -> bool:
    if isinstance(expected, bool) or isinstance(actual, bool):
        return actual is expected or (isinstance(actual, str) and actual.lower() == str(expected).lower())
    if isinstance(expected, int | float) and isinstance(actual, int | float):
        return math.isclose(float(actual), float(expected), rel_tol=1e-6, abs_tol=1e-12)
    if isinstance(expected, int | float) and isinstance(actual, str):
        try:
            return math.isclose(float(actual), float(expected), rel_tol=1e-6, abs_tol=1e-12)
        except ValueError:
            return False
    return actual == expected or str(actual) == str(expected)


def _close(key: str, names: list[str]) -> str:
    found = difflib.get_close_matches(key, names, n=4, cutoff=0.4)
    return f" Closest: {', '.join(found)}." if found else ""


def config_checks(config: Mapping[str, Any], expected: Mapping[str, Any]) -> list[Check]:
    """Each ``key = value`` of ``expected`` against the subject's ``config``."""
    checks = []
    for key, want in expected.items():
        name = f"config {key} == {want!r}"
        got = _lookup_config(config, key)
        if got is _MISSING:
            detail = (f"the subject config has no key {key!r}: the branch weight parameter is missing."
                      + _close(key, [str(k) for k in config]))
            checks.append(Check("preflight", name, False, detail))
        else:
            ok = _same(got, want)
            checks.append(Check("preflight", name, ok, f"config {key} = {got!r}" + ("" if ok else f", spec expects "
                                                                                       f"{want!r}")))
    return checks


def _attribute(model: Any, path: str) -> tuple[Any, Any, list[str]]:
    """Follow a dotted attribute path: (value or _MISSING, the last object reached, the parts walked)."""
    node, walked = model, []
    for part in path.split("."):
        if part.startswith("__") or not hasattr(node, part):  # dunder attributes (__globals__ ...) are never read
            return _MISSING, node, walked
        node = getattr(node, part)
        walked.append(part)
    return node, node, walked


def _attribute_names(node: Any) -> list[str]:
    names = [n for n in dir(node) if not n.startswith("_")]
    modules = getattr(node, "_modules", None)
    if isinstance(modules, dict):
        names += list(modules)
    return names


def model_checks(model: Any, expected: Mapping[str, Any]) -> list[Check]:
    """Each dotted attribute path of ``expected`` on ``model`` (a one-element tensor counts as its value)."""
    checks = []
    for key, want in expected.items():
        name = f"model.{key} == {want!r}"
        got, parent, walked = _attribute(model, key)
        if got is _MISSING:
            missing = key.split(".")[len(walked)]
            under = ".".join(walked) or f"the {type(model).__name__} model"
            detail = (f"the model has no attribute {key!r} (nothing called {missing!r} under {under}): the branch "
                      "weight parameter is missing." + _close(missing, _attribute_names(parent)))
            checks.append(Check("preflight", name, False, detail))
            continue
        if hasattr(got, "numel") and callable(got.numel) and got.numel() == 1:
            got = got.item()
        ok = _same(got, want)
        checks.append(Check("preflight", name, ok, f"model.{key} = {got!r}" + ("" if ok else f", spec expects "
                                                                                  f"{want!r}")))
    return checks


def _group_parameters(subject: Any, name: str) -> list[tuple[str, Any]]:
    from .select import parameters_of, select_modules

    if name in subject.targets:
        selector = subject.target(name).selector
    elif name in subject.branches:
        selector = subject.branch(name).selector
    else:
        selector = name
    return parameters_of(subject.model, select_modules(subject.model, selector), trainable_only=False)


def trained_checks(subject: Any, groups: list[str], rebuild: Callable[[int], Any], seed: int | None = None
                   ) -> list[Check]:
    """Whether each group (a target or branch name of ``subject``, or a selector) was loaded rather than left at
    its initialisation: ``rebuild(other_seed)`` builds the same subject with another init seed."""
    if not groups:
        return []
    import torch

    base_seed = seed if seed is not None else int(subject.config.get("seed", 0) or 0)
    try:
        other = rebuild(base_seed + 1)
    except GradflowError as exc:
        raise GradflowError(
            f"preflight.trained: cannot rebuild the subject with another init seed ({exc}). The 'trained' check "
            "needs a subject factory that takes seed= and draws its initialisation from it.") from None
    other_params = dict(other.model.named_parameters())
    checks = []
    for group in groups:
        try:
            params = _group_parameters(subject, group)
        except GradflowError as exc:
            raise GradflowError(f"preflight.trained: {group!r}: {exc}") from None
        if not params:
            raise GradflowError(f"preflight.trained: {group!r} selects modules without parameters.")
        differing = [n for n, p in params
                     if n in other_params and not torch.equal(p.detach().cpu(), other_params[n].detach().cpu())]
        name = f"trained {group}"
        if differing:
            shown = ", ".join(differing[:4]) + (", ..." if len(differing) > 4 else "")
            detail = (f"still at initialisation: {len(differing)} of {len(params)} parameter tensors change with the "
                      f"init seed ({shown}); load the trained base checkpoint before adding the branch.")
            checks.append(Check("preflight", name, False, detail))
        else:
            checks.append(Check("preflight", name, True, f"loaded: none of its {len(params)} parameter tensors "
                                                         "depends on the init seed"))
    return checks


def reachability_checks(record: Any) -> list[Check]:
    """One check per (branch, target) of ``record``: the branch must be on the target's gradient path."""
    checks = []
    for row in record.rows:
        if row["module"] != "*" or row.get("scale") is not None:
            continue
        name = f"reachable {row['branch']} -> {row['target']}"
        if row["status"] == RowStatus.NO_EFFECT:
            checks.append(Check("preflight", name, False,
                                f"branch {row['branch']!r} cannot affect target {row['target']!r}: identical gradient "
                                "norms with and without it (not on its gradient path). Reported, not counted as a "
                                "pass: fix the branch or target selector, or drop the pair from the spec."))
        else:
            checks.append(Check("preflight", name, True, "the branch changes the target's gradient"))
    return checks


def static_checks(spec: Any, subject: Any, rebuild: Callable[[int], Any]) -> list[Check]:
    """The checks that need the built subject but no measurement: config, model attributes, trained."""
    checks = config_checks(subject.config, spec.preflight_config)
    checks += model_checks(subject.model, spec.preflight_model)
    checks += trained_checks(subject, spec.trained, rebuild, spec.subject_seed)
    return checks
