"""Load real CLIP weights from a local file into the frozen open_clip backbone (no network).

Accepted files:

* an open_clip / OpenAI-named state dict saved with ``torch.save`` — read with
  ``torch.load(weights_only=True)`` (a ``state_dict`` wrapper key and ``module.`` prefixes are removed);
* a ``.safetensors`` file;
* the OpenAI TorchScript archive ``ViT-L-14-336px.pt``. ``weights_only=True`` refuses TorchScript
  archives, so this one path goes through ``torch.jit.load`` explicitly (TorchScript deserialisation, not
  an unrestricted pickle). Only pass archives you trust; ``allow_torchscript=False`` refuses them.

The visual positional embedding is resized to the model's grid with open_clip's ``resize_pos_embed``
(bicubic, antialias=True, align_corners=False, CLS row kept) — the same resize AA-CLIP does for 518 px
(24 x 24 -> 37 x 37). Keys and shapes are then checked and loaded strictly. Note: AA-CLIP runs the OpenAI
weights with exact GELU (the ``ViT-L-14-336`` config), not the QuickGELU they were trained with; we keep
that to match AA-CLIP numerically.
"""

from __future__ import annotations

import warnings
import zipfile
from pathlib import Path

import torch
from torch import nn

from gradflow.errors import SubjectError

_DROP_KEYS = ("input_resolution", "context_length", "vocab_size")


class WeightsError(SubjectError):
    """A CLIP weight file is missing, corrupt, or does not fit the backbone."""


def is_torchscript_archive(path: str | Path) -> bool:
    """True for a TorchScript zip archive (it holds ``code/`` and ``constants.pkl`` entries)."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError):
        return False
    return any(n.endswith("constants.pkl") for n in names) and any("/code/" in n for n in names)


def read_clip_state_dict(path: str | Path, allow_torchscript: bool = True) -> dict[str, torch.Tensor]:
    """The CLIP state dict stored in ``path`` (see the module docstring for the formats)."""
    path = Path(path)
    if not path.is_file():
        what = "is not a regular file (a folder or a device)" if path.exists() else "does not exist"
        raise WeightsError(f"weights file {str(path)!r} {what}. Give the path of a local CLIP file.")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        elif is_torchscript_archive(path):
            if not allow_torchscript:
                raise WeightsError(f"{str(path)!r} is a TorchScript archive and allow_torchscript is False.")
            with warnings.catch_warnings():  # torch.jit is deprecated but remains the way to read these
                warnings.simplefilter("ignore", FutureWarning)
                state = torch.jit.load(str(path), map_location="cpu").state_dict()
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except WeightsError:
        raise
    except Exception as exc:
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise WeightsError(
            f"cannot read weights file {str(path)!r} ({type(exc).__name__}: {first}). Is it a CLIP state dict, "
            "a .safetensors file or the OpenAI TorchScript archive, and complete?"
        ) from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise WeightsError(f"weights file {str(path)!r} does not hold a state dict.")
    out = {}
    for key, value in state.items():
        key = key[len("module."):] if key.startswith("module.") else key
        if key in _DROP_KEYS:
            continue
        if not isinstance(value, torch.Tensor):
            raise WeightsError(f"weights file {str(path)!r}: entry {key!r} is not a tensor.")
        out[key] = value.float() if value.is_floating_point() else value  # OpenAI archives are fp16
    return out


def load_clip_weights(clip: nn.Module, path: str | Path, allow_torchscript: bool = True) -> None:
    """Load ``path`` into the open_clip ``clip`` (positional embeddings resized), strictly."""
    from open_clip.model import resize_pos_embed, resize_text_pos_embed

    state = read_clip_state_dict(path, allow_torchscript)
    resize_pos_embed(state, clip)
    resize_text_pos_embed(state, clip)
    own = clip.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(v.shape)}"
             for k, v in own.items() if k in state and tuple(state[k].shape) != tuple(v.shape)]
    if missing or unexpected or wrong:
        raise WeightsError(
            f"weights file {str(path)!r} does not fit this backbone: missing {missing[:6]}, unexpected "
            f"{unexpected[:6]}, shape mismatches {wrong[:4]}. Check the preset/model name."
        )
    clip.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()}, strict=True)
