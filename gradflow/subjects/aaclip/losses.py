"""AA-CLIP losses (focal + dice segmentation, orthogonality, image-level CE) and the stage losses.

Stage 2 (image adapter): ``CE(det @ T, label) + sum_k seg(P_k, M)`` over all levels, weights 1, as in
both the official code and the fork.

Stage 1 (text adapter): we implement the **wei-paul fork variant**: ``sum_k seg(P_k, M) + 0.1 * L_orth``
over all four levels. Reason: this subject is the fork (its cross-attention is what is diagnosed), and
the official code's "last level only" comes from a variable being reassigned in a loop (issues #29/#38),
which the fork fixed. The official behaviour is available with ``loss_levels='last'``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def similarity_probs(features: torch.Tensor, anchors: torch.Tensor, image_size: int) -> torch.Tensor:
    """Training-form anomaly probabilities ``P (B, 2, S, S)``.

    ``features (B, L, D)`` patch tokens, ``anchors (B, D, 2)``; logits ``100 * f @ T`` reshaped to the
    patch grid, bilinearly upsampled (align_corners=True) to ``image_size``, softmax over the 2 channels.
    """
    b, n, _ = features.shape
    side = int(round(n**0.5))
    if side * side != n:
        raise ValueError(f"{n} patch tokens do not form a square grid")
    logits = (100.0 * features @ anchors).transpose(1, 2).reshape(b, 2, side, side)
    logits = F.interpolate(logits, size=(image_size, image_size), mode="bilinear", align_corners=True)
    return torch.softmax(logits, dim=1)


def focal_loss(probs: torch.Tensor, mask: torch.Tensor, gamma: float = 2.0, smooth: float = 1e-5) -> torch.Tensor:
    """Focal loss on softmax probabilities ``(B, 2, H, W)`` with a binary mask ``(B, 1, H, W)``.

    Per pixel: one-hot target clamped to ``[smooth, 1 - smooth]``, ``pt = sum_c t_c P_c + smooth``,
    loss ``-(1 - pt)^gamma log(pt)``; mean over all pixels (alpha = 1 for both classes).
    """
    target = torch.cat([1.0 - mask, mask], dim=1).to(probs.dtype).clamp(smooth, 1.0 - smooth)
    pt = (target * probs).sum(dim=1) + smooth
    return (-((1.0 - pt) ** gamma) * pt.log()).mean()


def dice_loss(pred: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """Binary dice loss ``1 - mean_b (2 sum(p t) + 1) / (sum p + sum t + 1)``; inputs ``(B, ...)``."""
    p = pred.reshape(pred.shape[0], -1)
    t = target.reshape(target.shape[0], -1).to(p.dtype)
    dice = (2.0 * (p * t).sum(1) + smooth) / (p.sum(1) + t.sum(1) + smooth)
    return 1.0 - dice.mean()


def seg_loss(probs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``focal(P, M) + dice(P_normal, 1 - M) + dice(P_anomaly, M)``."""
    m = mask[:, 0]
    return focal_loss(probs, mask) + dice_loss(probs[:, 0], 1.0 - m) + dice_loss(probs[:, 1], m)


def orthogonality_loss(anchors: torch.Tensor) -> torch.Tensor:
    """``(mean_b <T_b[:, 0], T_b[:, 1]>)^2`` for per-sample anchors ``(B, D, 2)``."""
    return (anchors[:, :, 0] * anchors[:, :, 1]).sum(dim=1).mean() ** 2


def detection_loss(det: torch.Tensor, anchors: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the unscaled logits ``det_b @ T_b`` (B, 2) against integer labels."""
    logits = torch.einsum("bd,bdk->bk", det, anchors)
    return F.cross_entropy(logits, labels.long())


def stage2_loss(
    seg_tokens: Sequence[torch.Tensor], det: torch.Tensor, anchors: torch.Tensor,
    masks: torch.Tensor, labels: torch.Tensor, image_size: int,
) -> torch.Tensor:
    """Stage-2 loss ``CE + sum_k seg(P_k, M)``."""
    loss = detection_loss(det, anchors, labels)
    for tokens in seg_tokens:
        loss = loss + seg_loss(similarity_probs(tokens, anchors, image_size), masks)
    return loss


def stage1_loss(
    features: Sequence[torch.Tensor], anchors: torch.Tensor, masks: torch.Tensor, image_size: int,
    orth_weight: float = 0.1, levels: str = "all",
) -> torch.Tensor:
    """Stage-1 loss: seg over all levels (fork) or the last level (official as run) + weighted L_orth."""
    used = list(features) if levels == "all" else list(features)[-1:]
    loss = orth_weight * orthogonality_loss(anchors)
    for feats in used:
        loss = loss + seg_loss(similarity_probs(feats, anchors, image_size), masks)
    return loss
