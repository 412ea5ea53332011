"""Save and load the AA-CLIP adapter groups, one file per group (as the official code does).

Files: ``text_adapter.pth``, ``image_adapter.pth`` (and, for the fork, ``text_cross_attn.pth`` /
``image_cross_attn.pth``), each a plain state dict written with ``torch.save`` and read back with
``torch.load(weights_only=True)`` — no arbitrary unpickling. Loading checks keys and shapes first and
raises :class:`CheckpointError` (a :class:`gradflow.errors.SubjectError`) naming what differs.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from gradflow.errors import SubjectError

GROUPS = ("text_adapter", "image_adapter", "text_cross_attn", "image_cross_attn")


class CheckpointError(SubjectError):
    """An adapter checkpoint is missing, corrupt, or does not fit the model."""


def _group(model: nn.Module, group: str) -> nn.Module:
    if group not in GROUPS or not hasattr(model, group):
        raise CheckpointError(f"unknown adapter group {group!r}; groups: {', '.join(GROUPS)}.")
    return getattr(model, group)


def save_group(model: nn.Module, group: str, path: str | Path) -> Path:
    """Write the state dict of ``model.<group>`` to ``path`` (parent folders are created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().clone() for k, v in _group(model, group).state_dict().items()}
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    tmp.replace(path)
    return path


def read_state(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict safely (``weights_only=True``); corrupt or foreign files raise CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist.")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for truncated / foreign files
        raise CheckpointError(
            f"checkpoint {str(path)!r} is corrupt or not a torch state dict ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''})."
        ) from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"checkpoint {str(path)!r} does not hold a state dict of tensors.")
    return state


def load_group(model: nn.Module, group: str, path: str | Path) -> None:
    """Load ``path`` into ``model.<group>`` after checking keys and shapes."""
    module = _group(model, group)
    state = read_state(path)
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint {str(path)!r} does not match {group}: missing keys {missing[:8]}, "
            f"unexpected keys {unexpected[:8]}. Was it saved from another group or preset?"
        )
    wrong = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(v.shape)}"
             for k, v in own.items() if tuple(state[k].shape) != tuple(v.shape)]
    if wrong:
        raise CheckpointError(
            f"checkpoint {str(path)!r} has shapes that do not fit {group} ({'; '.join(wrong[:6])}). "
            "It was probably saved from a different preset/backbone."
        )
    module.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()}, strict=True)


def save_adapters(model: nn.Module, directory: str | Path, groups: tuple[str, ...] = GROUPS) -> dict[str, Path]:
    """Write ``<group>.pth`` for each group into ``directory``; returns the paths."""
    directory = Path(directory)
    return {g: save_group(model, g, directory / f"{g}.pth") for g in groups}


def load_adapters(
    model: nn.Module, directory: str | Path, groups: tuple[str, ...] = ("text_adapter", "image_adapter"),
) -> list[str]:
    """Load the ``<group>.pth`` files present in ``directory``; returns the groups loaded."""
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"checkpoint folder {str(directory)!r} does not exist.")
    loaded = []
    for g in groups:
        path = directory / f"{g}.pth"
        if path.is_file():
            load_group(model, g, path)
            loaded.append(g)
    if not loaded:
        raise CheckpointError(f"no {' / '.join(f'{g}.pth' for g in groups)} in {str(directory)!r}.")
    return loaded
