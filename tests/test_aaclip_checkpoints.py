"""Adapter checkpoints and local CLIP weight files for the AA-CLIP subject."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gradflow.errors import SubjectError
from gradflow.subjects.aaclip import apply_overrides, build_model, preset_config
from gradflow.subjects.aaclip.checkpoints import (
    CheckpointError,
    load_adapters,
    load_group,
    save_adapters,
    save_group,
)
from gradflow.subjects.aaclip.weights import WeightsError, is_torchscript_archive, load_clip_weights


@pytest.fixture(scope="module")
def tiny_cfg():
    return preset_config("tiny")


def test_adapter_round_trip(tmp_path, tiny_cfg):
    a = build_model(tiny_cfg, seed=0)
    b = build_model(tiny_cfg, seed=1)
    paths = save_adapters(a, tmp_path)
    assert sorted(p.name for p in paths.values()) == [
        "image_adapter.pth", "image_cross_attn.pth", "text_adapter.pth", "text_cross_attn.pth"]
    assert load_adapters(b, tmp_path) == ["text_adapter", "image_adapter"]
    for group in ("text_adapter", "image_adapter"):
        for (name, p), q in zip(getattr(a, group).state_dict().items(),
                                getattr(b, group).state_dict().values(), strict=True):
            assert torch.equal(p, q), name
    assert not torch.equal(a.image_cross_attn.q_proj.weight, b.image_cross_attn.q_proj.weight)
    load_group(b, "image_cross_attn", paths["image_cross_attn"])
    assert torch.equal(a.image_cross_attn.q_proj.weight, b.image_cross_attn.q_proj.weight)


def test_corrupt_checkpoint_is_a_clear_error(tmp_path, tiny_cfg):
    model = build_model(tiny_cfg)
    path = save_group(model, "image_adapter", tmp_path / "image_adapter.pth")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt"):
        load_group(model, "image_adapter", path)
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint at all")
    with pytest.raises(SubjectError, match="corrupt"):
        load_group(model, "image_adapter", tmp_path / "junk.pth")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_group(model, "image_adapter", tmp_path / "missing.pth")


def test_mismatched_checkpoint_is_a_clear_error(tmp_path, tiny_cfg):
    model = build_model(tiny_cfg)
    state = model.image_adapter.state_dict()
    state["seg_proj.0.linear.weight"] = torch.zeros(5, 7)
    torch.save(state, tmp_path / "shape.pth")
    with pytest.raises(CheckpointError, match=r"seg_proj\.0\.linear\.weight: file \(5, 7\)"):
        load_group(model, "image_adapter", tmp_path / "shape.pth")
    fewer = build_model(apply_overrides(tiny_cfg, {"image_adapt_until": "1"}))
    save_group(fewer, "image_adapter", tmp_path / "keys.pth")
    with pytest.raises(CheckpointError, match="missing keys"):
        load_group(model, "image_adapter", tmp_path / "keys.pth")
    save_group(model, "text_adapter", tmp_path / "text.pth")
    with pytest.raises(CheckpointError, match="does not match image_adapter"):
        load_group(model, "image_adapter", tmp_path / "text.pth")


def test_clip_state_dict_loads_and_pos_embed_is_resized(tmp_path, tiny_cfg):
    src = build_model(tiny_cfg, seed=0)
    torch.save({"state_dict": {"module." + k: v for k, v in src.clip.state_dict().items()}}, tmp_path / "w.pt")
    same = build_model(tiny_cfg, seed=5)
    load_clip_weights(same.clip, tmp_path / "w.pt")
    for (name, p), q in zip(src.clip.state_dict().items(), same.clip.state_dict().values(), strict=True):
        assert torch.equal(p, q), name
    bigger = build_model(apply_overrides(tiny_cfg, {"image_size": "96"}), seed=5)
    load_clip_weights(bigger.clip, tmp_path / "w.pt")
    pos = bigger.clip.visual.positional_embedding
    assert pos.shape == (37, 64)  # 4 x 4 grid resized to 6 x 6, CLS row kept
    assert torch.equal(pos[0], src.clip.visual.positional_embedding[0])
    assert torch.equal(bigger.clip.visual.conv1.weight, src.clip.visual.conv1.weight)


def _torchscript_archive(state: dict[str, torch.Tensor], path) -> None:
    root = nn.Module()
    for key, value in state.items():
        *parents, leaf = key.split(".")
        module = root
        for part in parents:
            if not hasattr(module, part):
                module.add_module(part, nn.Module())
            module = getattr(module, part)
        module.register_buffer(leaf, value.clone().half() if value.is_floating_point() else value.clone())
    root.register_buffer("input_resolution", torch.tensor(64))
    with pytest.warns(FutureWarning):
        torch.jit.script(root).save(str(path))


def test_openai_style_torchscript_archive_loads(tmp_path, tiny_cfg):
    src = build_model(tiny_cfg, seed=0)
    path = tmp_path / "ViT-tiny.pt"
    _torchscript_archive(src.clip.state_dict(), path)
    assert is_torchscript_archive(path)
    dst = build_model(tiny_cfg, seed=7)
    load_clip_weights(dst.clip, path)
    torch.testing.assert_close(dst.clip.visual.conv1.weight, src.clip.visual.conv1.weight.half().float())
    with pytest.raises(WeightsError, match="TorchScript"):
        load_clip_weights(dst.clip, path, allow_torchscript=False)


def test_bad_weight_files(tmp_path, tiny_cfg):
    model = build_model(tiny_cfg)
    with pytest.raises(WeightsError, match="does not exist"):
        load_clip_weights(model.clip, tmp_path / "none.pt")
    (tmp_path / "bad.pt").write_bytes(b"\x00garbage")
    with pytest.raises(WeightsError, match="cannot read"):
        load_clip_weights(model.clip, tmp_path / "bad.pt")
    torch.save({"visual.conv1.weight": torch.zeros(1)}, tmp_path / "partial.pt")
    with pytest.raises(WeightsError, match="does not fit"):
        load_clip_weights(model.clip, tmp_path / "partial.pt")
