"""The AA-CLIP reference subject (official AA-CLIP + the wei-paul cross-attention fork).

``make_subject(preset="full" | "native" | "small" | "tiny", overrides=..., weights=..., seed=..., stage=...)``
returns a :class:`gradflow.subject.Subject`; see :mod:`gradflow.subjects.aaclip.subject` for the branch and
target names.
"""

from .config import AAClipConfig, apply_overrides, override_keys, preset_config
from .data import make_batch
from .model import AdaptedCLIP
from .subject import AAClipLoss, build_model, make_subject

__all__ = [
    "AAClipConfig",
    "AAClipLoss",
    "AdaptedCLIP",
    "apply_overrides",
    "build_model",
    "make_batch",
    "make_subject",
    "override_keys",
    "preset_config",
]
