"""gradflow: gradient-flow diagnostics for PyTorch.

Does a newly added branch (cross-attention, LoRA, adapter, gate) starve another trainable module of
gradient? ``compare`` answers with retention = ‖∇target‖ with the branch / ‖∇target‖ without it.
"""

from __future__ import annotations

__version__ = "0.1.0"

from .ablate import ablate
from .errors import (
    AblationError,
    GradflowError,
    LossError,
    RecordError,
    SelectorError,
    SubjectError,
)
from .measure import compare, sweep
from .probe import Probe, probe
from .record import RunRecord, load_run
from .select import parameters_of, select_modules
from .subject import Branch, Subject, Target

__all__ = [
    "AblationError",
    "Branch",
    "GradflowError",
    "LossError",
    "Probe",
    "RecordError",
    "RunRecord",
    "SelectorError",
    "Subject",
    "SubjectError",
    "Target",
    "__version__",
    "ablate",
    "compare",
    "load_run",
    "parameters_of",
    "probe",
    "select_modules",
    "sweep",
]
