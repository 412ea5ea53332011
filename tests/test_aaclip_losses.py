"""AA-CLIP losses against numbers worked out by hand / with plain-Python formulas."""

from __future__ import annotations

import math

import pytest
import torch

from gradflow.subjects.aaclip.losses import (
    detection_loss,
    dice_loss,
    focal_loss,
    orthogonality_loss,
    seg_loss,
    similarity_probs,
    stage1_loss,
    stage2_loss,
)


def _focal_pixel(p_normal: float, p_anomaly: float, is_anomaly: bool) -> float:
    eps = 1e-5
    t = (eps, 1 - eps) if is_anomaly else (1 - eps, eps)
    pt = t[0] * p_normal + t[1] * p_anomaly + eps
    return -((1 - pt) ** 2) * math.log(pt)


def test_focal_two_pixels_by_hand():
    probs = torch.tensor([[[[0.8, 0.3]], [[0.2, 0.7]]]], dtype=torch.float64)  # (1, 2, 1, 2)
    mask = torch.tensor([[[[0.0, 1.0]]]], dtype=torch.float64)
    expected = (_focal_pixel(0.8, 0.2, False) + _focal_pixel(0.3, 0.7, True)) / 2
    assert float(focal_loss(probs, mask)) == pytest.approx(expected, rel=1e-12)
    # pixel 1 by hand: pt = 0.8 * 0.99999 + 0.2 * 1e-5 + 1e-5 = 0.800004; (0.199996)^2 * -ln(0.800004)
    assert _focal_pixel(0.8, 0.2, False) == pytest.approx(0.199996**2 * -math.log(0.800004), rel=1e-12)


def test_dice_by_hand():
    pred = torch.tensor([[0.5, 1.0]], dtype=torch.float64)
    target = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    # (2 * 0.5 + 1) / (1.5 + 1 + 1) = 2 / 3.5
    assert float(dice_loss(pred, target)) == pytest.approx(1 - 2 / 3.5, rel=1e-12)
    perfect = torch.tensor([[1.0, 0.0], [0.0, 0.0]], dtype=torch.float64)
    assert float(dice_loss(perfect, perfect)) == pytest.approx(0.0, abs=1e-12)


def test_seg_is_focal_plus_two_dice():
    probs = torch.tensor([[[[0.8, 0.3]], [[0.2, 0.7]]]], dtype=torch.float64)
    mask = torch.tensor([[[[0.0, 1.0]]]], dtype=torch.float64)
    focal = (_focal_pixel(0.8, 0.2, False) + _focal_pixel(0.3, 0.7, True)) / 2
    dice_normal = 1 - (2 * 0.8 + 1) / (1.1 + 1 + 1)  # P_normal vs 1 - M = [1, 0]
    dice_anomaly = 1 - (2 * 0.7 + 1) / (0.9 + 1 + 1)  # P_anomaly vs M = [0, 1]
    assert float(seg_loss(probs, mask)) == pytest.approx(focal + dice_normal + dice_anomaly, rel=1e-12)


def test_orthogonality_is_squared_batch_mean_dot():
    a = torch.zeros(2, 3, 2, dtype=torch.float64)
    a[0, :, 0] = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)
    a[0, :, 1] = torch.tensor([0.6, 0.8, 0.0], dtype=torch.float64)  # dot 0.6
    a[1, :, 0] = torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64)
    a[1, :, 1] = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)  # dot 0
    assert float(orthogonality_loss(a)) == pytest.approx(0.3**2, rel=1e-12)


def test_detection_ce_uses_unscaled_logits():
    det = torch.tensor([[0.3, -0.2]], dtype=torch.float64)
    anchors = torch.eye(2, dtype=torch.float64)[None]  # logits = det
    expected = -math.log(math.exp(-0.2) / (math.exp(0.3) + math.exp(-0.2)))
    assert float(detection_loss(det, anchors, torch.tensor([1]))) == pytest.approx(expected, rel=1e-12)


def test_similarity_probs_single_token_is_softmax_of_100_cosines():
    f = torch.tensor([[[0.6, 0.8]]], dtype=torch.float64)  # (1, 1, 2): one patch
    t = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]], dtype=torch.float64)  # columns normal, anomaly
    probs = similarity_probs(f, t, 3)
    assert probs.shape == (1, 2, 3, 3)
    p_anomaly = math.exp(80) / (math.exp(60) + math.exp(80))
    torch.testing.assert_close(probs[0, 1], torch.full((3, 3), p_anomaly, dtype=torch.float64))


def test_similarity_upsampling_is_bilinear_align_corners():
    f = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]], dtype=torch.float64).reshape(1, 2, 2)  # wrong grid
    with pytest.raises(ValueError, match="square"):
        similarity_probs(f, torch.eye(2, dtype=torch.float64)[None], 4)
    feats = torch.zeros(1, 4, 2, dtype=torch.float64)
    feats[0, 0, 0] = 0.01  # only the top-left patch leans "normal"
    probs = similarity_probs(feats, torch.eye(2, dtype=torch.float64)[None], 3)
    # align_corners=True keeps the corner value: logit diff 1 at (0, 0), 0.5 at (0, 1), 0 at (2, 2)
    assert float(probs[0, 0, 0, 0]) == pytest.approx(1 / (1 + math.exp(-1)), rel=1e-12)
    assert float(probs[0, 0, 0, 1]) == pytest.approx(1 / (1 + math.exp(-0.5)), rel=1e-12)
    assert float(probs[0, 0, 2, 2]) == pytest.approx(0.5, rel=1e-12)


def test_stage_losses_compose_their_parts():
    gen = torch.Generator().manual_seed(0)
    feats = [torch.nn.functional.normalize(torch.randn(2, 4, 3, generator=gen, dtype=torch.float64), dim=-1)
             for _ in range(4)]
    anchors = torch.nn.functional.normalize(torch.randn(2, 3, 2, generator=gen, dtype=torch.float64), dim=1)
    masks = (torch.rand(2, 1, 8, 8, generator=gen) > 0.7).double()
    labels = torch.tensor([0, 1])
    det = torch.randn(2, 3, generator=gen, dtype=torch.float64) * 0.3
    segs = [float(seg_loss(similarity_probs(f, anchors, 8), masks)) for f in feats]
    expected2 = float(detection_loss(det, anchors, labels)) + sum(segs)
    assert float(stage2_loss(feats, det, anchors, masks, labels, 8)) == pytest.approx(expected2, rel=1e-12)
    orth = float(orthogonality_loss(anchors))
    assert float(stage1_loss(feats, anchors, masks, 8)) == pytest.approx(sum(segs) + 0.1 * orth, rel=1e-12)
    last = float(stage1_loss(feats, anchors, masks, 8, levels="last"))
    assert last == pytest.approx(segs[-1] + 0.1 * orth, rel=1e-12)
