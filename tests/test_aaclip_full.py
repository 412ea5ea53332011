"""Full-size AA-CLIP (ViT-L-14-336 at 518 px): parameter counts, and shapes in a slow test."""

from __future__ import annotations

import pytest
import torch

from gradflow.subjects.aaclip import AdaptedCLIP, make_subject, preset_config
from gradflow.subjects.aaclip.prompts import class_tokens


@pytest.fixture(scope="module")
def full_model() -> AdaptedCLIP:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return AdaptedCLIP(preset_config("full"))  # built, never run


def test_full_parameter_counts_match_the_spec(full_model):
    counts = full_model.parameter_counts()
    assert counts["image_adapter.layer_adapters"] == 6_291_456
    assert counts["image_adapter.seg_proj"] == 3_145_728
    assert counts["image_adapter.det_proj"] == 786_432
    assert counts["image_adapter"] == 10_223_616
    assert counts["text_adapter"] == 2_359_296
    assert counts["image_cross_attn"] == 2_755_840
    assert counts["text_cross_attn"] == 2_362_368
    assert full_model.clip.visual.positional_embedding.shape == (1370, 1024)
    assert tuple(full_model.clip.visual.grid_size) == (37, 37)
    assert len(full_model.clip.visual.transformer.resblocks) == 24
    assert isinstance(full_model.clip.visual.transformer.resblocks[0].mlp.gelu, torch.nn.GELU)
    assert not any(p.requires_grad for p in full_model.clip.parameters())
    trainable = sum(p.numel() for p in full_model.parameters() if p.requires_grad)
    assert trainable == 10_223_616 + 2_755_840


@pytest.mark.slow
def test_full_shapes_and_stage2_pass():
    sub = make_subject("full", overrides={"stage2.batch_size": "1", "class_names": "candle"})
    model = sub.model
    batch = sub.batch(0)
    assert batch["images"].shape == (1, 3, 518, 518)
    tokens = class_tokens("candle")
    with torch.no_grad():
        assert model.text_hidden(tokens[:2]).shape == (2, 77, 768)
        assert model.encode_text(tokens[:2]).shape == (2, 768)
        assert model.text_context(tokens).shape == (1232, 768)
        x = model.clip.visual._embeds(batch["images"])
        assert x.shape == (1, 1370, 1024)
        assert model.clip.visual.transformer.resblocks[0](x).shape == (1, 1370, 1024)
    loss = sub.loss_fn(model, batch)
    grads = torch.autograd.grad(loss, [p for _, p in sub.target_parameters("image_adapter")])
    assert all(float(g.norm()) > 0 for g in grads)
    with torch.no_grad():
        seg, det = model(batch["images"])
    assert [s.shape for s in seg] == [(1, 1369, 768)] * 4
    assert det.shape == (1, 768)


@pytest.mark.slow
def test_small_preset_shapes_and_stage2_pass():
    sub = make_subject("small")
    model = sub.model
    assert model.parameter_counts()["image_adapter.layer_adapters"] == 3 * 768 * 768
    batch = sub.batch(0)
    assert batch["images"].shape == (2, 3, 224, 224)
    loss = sub.loss_fn(model, batch)
    grads = torch.autograd.grad(loss, [p for _, p in sub.target_parameters("image_adapter")])
    assert all(float(g.norm()) > 0 for g in grads)
    with torch.no_grad():
        seg, det = model(batch["images"])
    assert [s.shape for s in seg] == [(2, 196, 512)] * 4
    assert det.shape == (2, 512)
