"""Prompts, synthetic batches and the real-folder loader of the AA-CLIP subject."""

from __future__ import annotations

import pytest
import torch

import gradflow as gf
from gradflow.errors import SubjectError
from gradflow.subjects.aaclip import make_batch, preset_config
from gradflow.subjects.aaclip.data import CLIP_MEAN, CLIP_STD, folder_batches, scan_mvtec_folder
from gradflow.subjects.aaclip.prompts import REAL_NAMES, class_tokens, sentences, tokenize


def test_prompt_sentences():
    normal, abnormal = sentences("bottle")
    assert len(normal) == 6 and len(abnormal) == 10
    assert normal[:2] == ["dark bottle.", "a photo of dark bottle."]
    assert "a photo of a damaged dark bottle." in abnormal
    assert "a dark bottle with defect." in abnormal
    assert REAL_NAMES["pcb1"] == "dual ultrasonic distance sensor pcb module"
    assert sentences("my_part")[0][0] == "my part."


def test_tokens_sot_eot_and_argmax():
    ids = tokenize(["a photo of a damaged bottle."])
    assert ids.shape == (1, 77)
    assert int(ids[0, 0]) == 49406
    assert int(ids.argmax(-1)) == 8 and int(ids[0, 8]) == 49407
    assert int(ids[0, 9:].abs().sum()) == 0
    tokens = class_tokens("pill")
    assert tokens.shape == (16, 77)
    assert bool((tokens.max(-1).values == 49407).all())


def test_synthetic_batch_is_deterministic_and_well_formed():
    cfg = preset_config("tiny")
    state = torch.random.get_rng_state()
    a, b = make_batch(cfg, 5, seed=1), make_batch(cfg, 5, seed=1)
    assert torch.equal(torch.random.get_rng_state(), state)
    for key in ("images", "masks", "labels"):
        assert torch.equal(a[key], b[key])
    assert a["class_names"] == b["class_names"]
    c = make_batch(cfg, 6, seed=1)
    d = make_batch(cfg, 5, seed=2)
    assert not torch.equal(a["images"], c["images"]) and not torch.equal(a["images"], d["images"])
    big = make_batch(cfg, 0, seed=0, batch_size=32)
    assert big["images"].shape == (32, 3, 64, 64) and big["masks"].shape == (32, 1, 64, 64)
    assert big["labels"].dtype == torch.long
    assert set(big["masks"].unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(big["labels"], (big["masks"].flatten(1).sum(1) > 0).long())
    assert 0 < int(big["labels"].sum()) < 32
    assert set(big["class_names"]) <= set(cfg.class_names)
    # normalised with CLIP stats: undoing them lands in [0, 1]
    raw = big["images"] * torch.tensor(CLIP_STD).view(1, 3, 1, 1) + torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    assert float(raw.min()) >= -1e-5 and float(raw.max()) <= 1 + 1e-5


def make_mvtec_folder(tmp_path):
    from PIL import Image

    good = tmp_path / "widget" / "test" / "good"
    bad = tmp_path / "widget" / "test" / "crack"
    gt = tmp_path / "widget" / "ground_truth" / "crack"
    for folder in (good, bad, gt):
        folder.mkdir(parents=True)
    Image.new("RGB", (20, 20), (10, 200, 30)).save(good / "000.png")
    Image.new("RGB", (20, 20), (200, 20, 30)).save(bad / "000.png")
    mask = Image.new("L", (20, 20), 0)
    mask.paste(255, (0, 0, 10, 10))
    mask.save(gt / "000_mask.png")
    return tmp_path


def test_compare_on_a_data_folder_from_the_cli(tmp_path):
    from typer.testing import CliRunner

    from gradflow.cli.app import app

    folder = make_mvtec_folder(tmp_path / "data")
    out = tmp_path / "run.json"
    result = CliRunner().invoke(app, ["compare", "--preset", "tiny", "--data", str(folder), "--batches", "2",
                                      "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    record = gf.load_run(out)
    assert record.data["subject"]["config"]["data"] == str(folder)
    assert record.rows[0]["status"] == "ok"


def test_real_folder_loader(tmp_path):
    from PIL import Image

    good = tmp_path / "widget" / "test" / "good"
    bad = tmp_path / "widget" / "test" / "crack"
    gt = tmp_path / "widget" / "ground_truth" / "crack"
    for folder in (good, bad, gt):
        folder.mkdir(parents=True)
    Image.new("RGB", (20, 20), (10, 200, 30)).save(good / "000.png")
    Image.new("RGB", (20, 20), (200, 20, 30)).save(bad / "000.png")
    mask = Image.new("L", (20, 20), 0)
    mask.paste(255, (0, 0, 10, 10))
    mask.save(gt / "000_mask.png")
    records = scan_mvtec_folder(tmp_path)
    assert [(r[0].parent.name, r[1] is not None, r[2]) for r in records] == [
        ("crack", True, "widget"), ("good", False, "widget")]
    batch = folder_batches(records, 16, 2)(0)
    assert batch["images"].shape == (2, 3, 16, 16)
    assert batch["labels"].tolist() == [1, 0]
    assert float(batch["masks"][0].mean()) == pytest.approx(0.25)
    assert float(batch["masks"][1].sum()) == 0
    with pytest.raises(SubjectError, match="does not exist"):
        scan_mvtec_folder(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SubjectError, match="no images"):
        scan_mvtec_folder(tmp_path / "empty")
