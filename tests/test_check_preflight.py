"""Preflight checks: the branch weight exists and has its value, base adapters are loaded, branches reach
their targets."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import torch

from gradflow import preflight
from gradflow.evaluation import build_subject, evaluate
from gradflow.report.check import spec_text
from gradflow.spec import load_spec

ROOT = Path(__file__).resolve().parent.parent

TOY = """
branches = ["cross"]
targets = ["adapter"]
batches = 2

[subject]
name = "{name}"

[preflight]
{preflight}
"""


def write(tmp_path: Path, preflight_text: str, name: str = "tests.toy_subject:make_subject",
          file: str = "spec.toml") -> Path:
    path = tmp_path / file
    path.write_text(textwrap.dedent(TOY.format(name=name, preflight=preflight_text)))
    return path


def failed(result) -> dict[str, str]:
    return {c.name: c.detail for c in result.failures}


def test_config_and_model_values(tmp_path):
    good = evaluate(write(tmp_path, 'config = { width = 8, depth = 3 }\nmodel = { "head.in_features" = 8 }'))
    assert good.exit_code == 0, spec_text(good)
    bad = evaluate(write(tmp_path, 'config = { width = 16, cross_weight = 0.1 }\n'
                                   'model = { "blocks.0.cross.scale" = 0.1, "blocks.9.cross" = 1 }'))
    assert bad.exit_code == 1 and bad.record is not None  # preflight failures still show the measurement
    problems = failed(bad)
    assert "spec expects 16" in problems["config width == 16"]
    assert "branch weight parameter is missing" in problems["config cross_weight == 0.1"]
    assert "nothing called 'scale' under blocks.0.cross" in problems["model.blocks.0.cross.scale == 0.1"]
    assert "nothing called '9' under blocks" in problems["model.blocks.9.cross == 1"]
    assert "preflight" in spec_text(bad) and "FAIL" in spec_text(bad)


def _loaded_factory(tmp_path: Path) -> None:
    """A user factory that loads trained adapters from a file (like --load_base_image_adapter)."""
    from tests.toy_subject import make_subject

    trained = make_subject(seed=123).model
    torch.save({k: v for k, v in trained.state_dict().items() if ".adapter." in k}, tmp_path / "adapters.pt")
    (tmp_path / "loaded_toy.py").write_text(textwrap.dedent('''
        from pathlib import Path

        import torch

        import gradflow as gf
        from tests.toy_subject import make_subject as _base


        @gf.subject_factory
        def make_subject(preset=None, seed=0, overrides=None):
            subject = _base(preset, seed, overrides)
            state = torch.load(Path(__file__).with_name("adapters.pt"), weights_only=True)
            subject.model.load_state_dict(state, strict=False)
            return subject


        @gf.subject_factory
        def no_seed(preset=None, overrides=None):
            return make_subject(preset, 0, overrides)
        '''))


def test_untrained_adapter_is_caught(tmp_path):
    result = evaluate(write(tmp_path, 'trained = ["adapter"]'))
    assert result.exit_code == 1
    assert "still at initialisation" in failed(result)["trained adapter"]


def test_loaded_adapter_passes_and_head_does_not(tmp_path):
    _loaded_factory(tmp_path)
    result = evaluate(write(tmp_path, 'trained = ["adapter", "blocks.*.adapter", "head"]',
                            name="loaded_toy:make_subject"))
    assert [c.passed for c in result.checks if c.name.startswith("trained")] == [True, True, False]
    assert "load the trained base checkpoint" in failed(result)["trained head"]


def test_trained_needs_a_seeded_factory(tmp_path):
    _loaded_factory(tmp_path)
    result = evaluate(write(tmp_path, 'trained = ["adapter"]', name="loaded_toy:no_seed"))
    assert result.exit_code == 2 and "preflight.trained" in result.error and "seed" in result.error


def test_unreachable_branch_is_reported(tmp_path):
    spec = write(tmp_path, "reachable = true").read_text().replace(
        'branches = ["cross"]\n', "").replace(
        "[subject]", '[branches]\nlate = { selector = "head", mode = "scale", scale = 1.0 }\n\n[subject]')
    (tmp_path / "spec.toml").write_text(spec)
    result = evaluate(tmp_path / "spec.toml")
    assert "not on its gradient path" in failed(result)["reachable late -> adapter"]


def test_reachability_from_record():
    class Record:
        rows = [{"branch": "b", "target": "t", "module": "*", "scale": None, "status": "no_effect"},
                {"branch": "b", "target": "u", "module": "*", "scale": None, "status": "ok"},
                {"branch": "b", "target": "t", "module": "m", "scale": None, "status": "no_effect"}]

    checks = preflight.reachability_checks(Record())
    assert [(c.name, c.passed) for c in checks] == [("reachable b -> t", False), ("reachable b -> u", True)]


def test_aaclip_seed_checklist(tmp_path):
    """The seed's checklist on the AA-CLIP tiny subject: random base adapters, and the v1 (full-scale) branch."""
    spec = load_spec(ROOT / "probes" / "aaclip-stage2.toml")
    spec.trained = ["image_adapter"]
    subject = build_subject(spec, "tiny")
    checks = preflight.static_checks(spec, subject, rebuild=lambda seed: build_subject(spec, "tiny", seed))
    result = {c.name: c for c in checks}
    assert result["config resolved_image_cross_attn_weight == 0.1"].passed
    assert result["model.image_cross_attn.scale == 0.1"].passed
    assert not result["trained image_adapter"].passed
    assert "still at initialisation" in result["trained image_adapter"].detail

    spec.trained = []
    spec.overrides = {**spec.overrides, "version": "v1"}  # the bug: the branch added at full scale
    spec.preflight_model = {**spec.preflight_model, "image_cross_attn.i_ca_w": 0.1}
    checks = {c.name: c for c in preflight.static_checks(spec, build_subject(spec, "tiny"), rebuild=None)}
    assert "spec expects 0.1" in checks["config resolved_image_cross_attn_weight == 0.1"].detail
    assert "= 1.0" in checks["model.image_cross_attn.scale == 0.1"].detail
    assert "branch weight parameter is missing" in checks["model.image_cross_attn.i_ca_w == 0.1"].detail


@pytest.mark.parametrize("name", ["aaclip-stage1.toml", "aaclip-stage2.toml"])
def test_shipped_specs_name_real_branches_and_targets(name):
    spec = load_spec(ROOT / "probes" / name)
    subject = build_subject(spec, "tiny")  # raises a SpecError naming the key if a name is wrong
    assert set(spec.branches) <= set(subject.branches) and set(spec.targets) <= set(subject.targets)
    checks = preflight.static_checks(spec, subject, rebuild=None)
    assert all(c.passed for c in checks), [c.detail for c in checks if not c.passed]
