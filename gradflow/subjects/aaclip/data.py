"""Batches for the AA-CLIP subject: a deterministic synthetic anomaly generator and a real-folder loader.

A batch is a dict::

    images       (B, 3, H, W) float, normalised with the OpenAI CLIP mean/std
    masks        (B, 1, H, W) float in {0, 1}
    labels       (B,) long, 1 = anomalous
    class_names  list[str] of length B
    index        int, the batch index

:func:`make_batch` draws everything from a local ``torch.Generator`` seeded from ``(seed, index)``; the
global RNG is never touched, and the same ``(cfg, index, seed)`` always gives the identical batch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from gradflow.errors import SubjectError

from .config import AAClipConfig

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def normalize_images(images: torch.Tensor) -> torch.Tensor:
    """Apply the CLIP mean/std normalisation to images in [0, 1] of shape ``(B, 3, H, W)``."""
    mean = torch.tensor(CLIP_MEAN, dtype=images.dtype).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, dtype=images.dtype).view(1, 3, 1, 1)
    return (images - mean) / std


def _batch_generator(seed: int, index: int) -> torch.Generator:
    return torch.Generator().manual_seed((int(seed) * 1_000_003 + int(index) * 7_919 + 12_345) % (2**63))


def _class_texture(class_id: int, size: int, gen: torch.Generator) -> torch.Tensor:
    """A class-specific textured surface in [0, 1], ``(3, size, size)``, with per-image jitter."""
    cls_gen = torch.Generator().manual_seed(1_000 + class_id)
    color = 0.25 + 0.6 * torch.rand(3, generator=cls_gen)
    freqs = 2.0 + 10.0 * torch.rand(3, 2, generator=cls_gen)
    coords = torch.linspace(0.0, 1.0, size)
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    phase = 2 * math.pi * torch.rand(3, generator=gen)
    tex = torch.zeros(size, size)
    for k in range(3):
        tex = tex + torch.sin(2 * math.pi * (freqs[k, 0] * xx + freqs[k, 1] * yy) + phase[k])
    tex = 0.5 + tex / 6.0 + 0.05 * torch.randn(size, size, generator=gen)
    jitter = 0.05 * torch.randn(3, 1, 1, generator=gen)
    return ((color.view(3, 1, 1) + jitter) * (0.6 + 0.4 * tex)).clamp(0.0, 1.0)


def _defect(size: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A random elliptical / scratch-like defect: ``(mask (size, size) in {0,1}, colour patch (3,size,size))``."""
    coords = torch.linspace(0.0, 1.0, size)
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    cy, cx = (0.2 + 0.6 * torch.rand(2, generator=gen)).tolist()
    ry, rx = (0.05 + 0.15 * torch.rand(2, generator=gen)).tolist()
    angle = float(math.pi * torch.rand(1, generator=gen))
    dy, dx = yy - cy, xx - cx
    u = dx * math.cos(angle) + dy * math.sin(angle)
    v = -dx * math.sin(angle) + dy * math.cos(angle)
    if float(torch.rand(1, generator=gen)) < 0.5:  # scratch: long and thin
        rx, ry = max(rx, ry) * 1.5, max(min(rx, ry) * 0.25, 1.5 / size)
    mask = ((u / rx) ** 2 + (v / ry) ** 2 <= 1.0).float()
    if mask.sum() == 0:  # too thin for this resolution: mark the centre pixel
        mask[int(cy * (size - 1)), int(cx * (size - 1))] = 1.0
    colour = torch.rand(3, 1, 1, generator=gen) * torch.ones(3, size, size)
    colour = (colour + 0.15 * torch.randn(3, size, size, generator=gen)).clamp(0.0, 1.0)
    return mask, colour


def make_batch(cfg: AAClipConfig, index: int, seed: int = 0, batch_size: int | None = None) -> dict[str, Any]:
    """The synthetic batch ``index`` for ``cfg`` (textured surfaces with pasted defects)."""
    size = cfg.image_size
    b = cfg.batch_size if batch_size is None else batch_size
    gen = _batch_generator(seed, index)
    images, masks, labels, names = [], [], [], []
    for _ in range(b):
        class_id = int(torch.randint(len(cfg.class_names), (1,), generator=gen))
        image = _class_texture(class_id, size, gen)
        mask = torch.zeros(size, size)
        anomalous = bool(torch.rand(1, generator=gen) < cfg.anomaly_prob)
        if anomalous:
            mask, colour = _defect(size, gen)
            image = image * (1 - mask) + colour * mask
        images.append(image)
        masks.append(mask[None])
        labels.append(int(anomalous))
        names.append(cfg.class_names[class_id])
    return {
        "images": normalize_images(torch.stack(images)),
        "masks": torch.stack(masks),
        "labels": torch.tensor(labels, dtype=torch.long),
        "class_names": names,
        "index": int(index),
    }


def synthetic_batches(cfg: AAClipConfig, seed: int = 0) -> Callable[[int], dict[str, Any]]:
    """``index -> batch`` callable over :func:`make_batch` (what the subject passes to gradflow)."""

    def batches(index: int) -> dict[str, Any]:
        return make_batch(cfg, index, seed)

    return batches


# --------------------------------------------------------------------------------------------------
# real data

_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}


def scan_mvtec_folder(root: str | Path, split: str = "test") -> list[tuple[Path, Path | None, str]]:
    """Records ``(image, mask or None, class)`` from an MVTec-AD / VisA-style tree.

    Layout: ``root/<class>/<split>/<defect>/<img>`` and ``root/<class>/ground_truth/<defect>/<img>_mask.*``
    (or the same stem); ``good`` images are normal. Raises :class:`SubjectError` when nothing is found.
    """
    root = Path(root)
    if not root.is_dir():
        raise SubjectError(f"data folder {str(root)!r} does not exist or is not a directory.")
    records: list[tuple[Path, Path | None, str]] = []
    for class_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        split_dir = class_dir / split
        if not split_dir.is_dir():
            continue
        for defect_dir in sorted(p for p in split_dir.iterdir() if p.is_dir()):
            for img in sorted(p for p in defect_dir.iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES):
                mask = None
                if defect_dir.name != "good":
                    gt = class_dir / "ground_truth" / defect_dir.name
                    candidates = [p for p in gt.glob(img.stem + "*") if p.suffix.lower() in _IMAGE_SUFFIXES]
                    if not candidates:
                        raise SubjectError(f"no ground-truth mask for anomalous image {img} (looked in {gt}).")
                    mask = sorted(candidates)[0]
                records.append((img, mask, class_dir.name))
    if not records:
        raise SubjectError(
            f"no images found under {str(root)!r}; expected <class>/{split}/<defect>/<image> (MVTec layout)."
        )
    return records


def load_record(image: Path, mask: Path | None, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One image (normalised, ``(3, size, size)``, bicubic) and its mask (``(1, size, size)`` in {0,1})."""
    from PIL import Image

    try:
        with Image.open(image) as im:
            rgb = im.convert("RGB").resize((size, size), Image.BICUBIC)
            img = torch.frombuffer(bytearray(rgb.tobytes()), dtype=torch.uint8)
        img = img.view(size, size, 3).permute(2, 0, 1).float().div(255.0)
        if mask is None:
            m = torch.zeros(1, size, size)
        else:
            with Image.open(mask) as mk:
                gray = mk.convert("L").resize((size, size), Image.NEAREST)
                m = torch.frombuffer(bytearray(gray.tobytes()), dtype=torch.uint8)
            m = (m.view(1, size, size) != 0).float()
    except OSError as exc:
        raise SubjectError(f"cannot read image/mask {image} / {mask}: {exc}") from None
    return normalize_images(img[None])[0], m


def folder_batches(
    records: Sequence[tuple[Path, Path | None, str]], image_size: int, batch_size: int,
) -> Callable[[int], dict[str, Any]]:
    """``index -> batch`` over real records, in order (batch i = records[i*B:(i+1)*B], wrapping around)."""
    if not records:
        raise SubjectError("no records to build batches from.")

    def batches(index: int) -> dict[str, Any]:
        chosen = [records[(index * batch_size + j) % len(records)] for j in range(batch_size)]
        loaded = [load_record(img, mask, image_size) for img, mask, _ in chosen]
        return {
            "images": torch.stack([x for x, _ in loaded]),
            "masks": torch.stack([m for _, m in loaded]),
            "labels": torch.tensor([int(mask is not None) for _, mask, _ in chosen], dtype=torch.long),
            "class_names": [c for _, _, c in chosen],
            "index": int(index),
        }

    return batches


def resize_masks(masks: torch.Tensor, size: int) -> torch.Tensor:
    """Nearest-neighbour resize of ``(B, 1, H, W)`` masks to ``size`` (kept binary)."""
    if masks.shape[-1] == size and masks.shape[-2] == size:
        return masks
    return (F.interpolate(masks.float(), size=(size, size), mode="nearest") > 0.5).float()
