"""Prompt sentences, class "real names", tokenisation and the per-class text anchors T_c.

For one class, each state phrase (filled with the class's real name) is put into each template:
3 normal phrases x 2 templates = 6 normal sentences, 5 abnormal phrases x 2 templates = 10 abnormal
sentences. The anchor of a state is the L2-normalised mean of the L2-normalised sentence embeddings;
``T_c = [normal, abnormal]`` as columns, shape ``(D, 2)``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

NORMAL_STATES = ["{}", "a {}", "the {}"]
ABNORMAL_STATES = ["a damaged {}", "a broken {}", "a {} with flaw", "a {} with defect", "a {} with damage"]
TEMPLATES = ["{}.", "a photo of {}."]

REAL_NAMES: dict[str, str] = {
    # VisA
    "candle": "candle",
    "pcb1": "dual ultrasonic distance sensor pcb module",
    "pcb2": "integrated circuits board",
    "pcb3": "infrared sensor pcb module",
    "pcb4": "battery charging pcb module",
    "capsules": "capsules",
    "macaroni1": "orange macaroni",
    "macaroni2": "scattered yellow macaroni",
    "cashew": "cashew nut",
    "chewinggum": "chewing gum",
    "fryum": "wheel-shaped fryum snack",
    "pipe_fryum": "pipe-shaped fryum",
    # MVTec AD
    "bottle": "dark bottle",
    "cable": "top view of three cables",
    "capsule": "black and orange capsule",
    "carpet": "gray carpet",
    "grid": "metal or plastic mesh",
    "hazelnut": "single brown hazelnut",
    "leather": "brown leather",
    "metal_nut": "metal nut which has four notched edges",
    "pill": "oval white pill with small red speckles and the letters 'FF' engraved",
    "screw": "screw",
    "tile": "speckled tile surface",
    "transistor": "a three-legged transistor placed vertically",
    "toothbrush": "toothbrush head",
    "wood": "wood surface",
    "zipper": "a black zipper",
    # medical
    "Brain": "scan",
    "Liver": "scan",
    "Retina": "scan",
    "ClinicDB": "colon endoscopy image",
    "ColonDB": "colon endoscopy image",
    "Kvasir": "colon endoscopy image",
    "CVC-300": "colon endoscopy image",
    "object": "object",
}


def real_name(class_name: str) -> str:
    """The descriptive name used in prompts (unknown classes: underscores become spaces)."""
    return REAL_NAMES.get(class_name, class_name.replace("_", " "))


def sentences(class_name: str) -> tuple[list[str], list[str]]:
    """``(normal, abnormal)`` prompt sentences of a class: 6 and 10 strings."""
    name = real_name(class_name)

    def expand(states: Sequence[str]) -> list[str]:
        return [template.format(state.format(name)) for state in states for template in TEMPLATES]

    return expand(NORMAL_STATES), expand(ABNORMAL_STATES)


_TOKENIZER: Callable[..., torch.Tensor] | None = None


def tokenize(texts: Sequence[str], context_length: int = 77) -> torch.Tensor:
    """CLIP BPE token ids ``(N, context_length)`` (SOT 49406 ... EOT 49407, zero padded); offline."""
    global _TOKENIZER
    if _TOKENIZER is None:
        import open_clip

        _TOKENIZER = open_clip.get_tokenizer("ViT-L-14-336")
    return _TOKENIZER(list(texts), context_length=context_length)


def class_tokens(class_name: str, context_length: int = 77) -> torch.Tensor:
    """Tokens of the 16 sentences of a class: rows 0..5 normal, rows 6..15 abnormal."""
    normal, abnormal = sentences(class_name)
    return tokenize(normal + abnormal, context_length)


def anchors_from_embeddings(embeddings: torch.Tensor, n_normal: int = 6) -> torch.Tensor:
    """``T_c (D, 2)`` from the sentence embeddings ``(16, D)`` of one class (normal rows first)."""
    emb = F.normalize(embeddings, dim=-1)
    normal = F.normalize(emb[:n_normal].mean(0), dim=-1)
    abnormal = F.normalize(emb[n_normal:].mean(0), dim=-1)
    return torch.stack([normal, abnormal], dim=1)
