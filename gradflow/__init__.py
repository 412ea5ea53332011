"""gradflow: gradient-flow diagnostics for PyTorch.

Does a newly added branch (cross-attention, LoRA, adapter, gate) starve another trainable module of
gradient? ``compare`` answers with retention = ‖∇target‖ with the branch / ‖∇target‖ without it.

Attributes load lazily (PEP 562) so that ``import gradflow.pytest_plugin``, which pytest does in every
test session of an environment where gradflow is installed, does not import torch. (That is also why the
modules are ``probing.py`` and ``ablation.py``: a submodule named ``probe`` would shadow ``gradflow.probe``.)
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "ablate": "ablation",
    "AblationError": "errors",
    "GradflowError": "errors",
    "LossError": "errors",
    "ProbeError": "errors",
    "RecordError": "errors",
    "SelectorError": "errors",
    "SubjectError": "errors",
    "compare": "measure",
    "learn": "learning",
    "sweep": "measure",
    "Monitor": "monitor",
    "RetentionFailure": "monitor",
    "Probe": "probing",
    "probe": "probing",
    "RunRecord": "record",
    "load_run": "record",
    "parameters_of": "select",
    "select_modules": "select",
    "subject_factory": "subjects.registry",
    "Band": "verdicts",
    "Branch": "subject",
    "Subject": "subject",
    "Target": "subject",
}

__all__ = sorted([*_EXPORTS, "__version__"])


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'gradflow' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__


if TYPE_CHECKING:  # static analysers and IDEs see the real names
    from .ablation import ablate
    from .errors import AblationError, GradflowError, LossError, ProbeError, RecordError, SelectorError, SubjectError
    from .learning import learn
    from .measure import compare, sweep
    from .monitor import Monitor, RetentionFailure
    from .probing import Probe, probe
    from .record import RunRecord, load_run
    from .select import parameters_of, select_modules
    from .subject import Branch, Subject, Target
    from .subjects.registry import subject_factory
    from .verdicts import Band
