"""Bad input: one clear paragraph naming what exists; the CLI exits 2 and writes nothing."""

from __future__ import annotations

import pytest
import torch
from reference_models import make_batches, make_net, mse
from typer.testing import CliRunner

import gradflow as gf
from gradflow.cli.app import app

TOY = "tests.toy_subject:make_subject"


def subject(**kw):
    net = make_net()
    base = {"branches": {"cross": "blocks.*.cross.inner"}, "targets": {"adapter": "blocks.*.adapter"}}
    base.update(kw)
    return gf.Subject(net, kw.pop("loss_fn", mse), make_batches(2), branches=base["branches"],
                      targets=base["targets"])


def test_unknown_branch_and_target_name_what_exists():
    with pytest.raises(gf.SubjectError, match="unknown branch 'crosss'.*cross"):
        gf.compare(subject(), branches=["crosss"])
    with pytest.raises(gf.SubjectError, match="unknown target 'adapters'.*adapter"):
        gf.compare(subject(), targets=["adapters"])


def test_selector_matching_nothing_names_close_modules():
    with pytest.raises(gf.SelectorError) as info:
        gf.compare(subject(targets={"adapter": "blocks.*.adaptor"}))
    message = str(info.value)
    assert "blocks.*.adaptor" in message and "blocks.0.adapter" in message and "gradflow list" in message


def test_target_without_trainable_parameters():
    net = make_net()
    for block in net.blocks:
        block.adapter.requires_grad_(False)
    with pytest.raises(gf.SubjectError, match="no trainable parameter.*requires_grad=False"):
        gf.compare(net, mse, make_batches(2), branches={"cross": "blocks.*.cross.inner"},
                   targets={"adapter": "blocks.*.adapter"})


def test_identity_ablation_on_shape_changing_module():
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 1)).double()
    batches = [torch.randn(2, 4, dtype=torch.float64)]
    with pytest.raises(gf.AblationError, match=r"'identity' mode.*\(2, 4\).*\(2, 3\).*'zero'"):
        gf.compare(model, lambda m, x: m(x).sum(), batches, branches={"first": gf.Branch("0", mode="identity")},
                   targets={"last": "1"})


def test_non_scalar_and_non_tensor_loss():
    with pytest.raises(gf.LossError, match=r"shape \(4, 1\).*scalar"):
        gf.compare(make_net(), lambda m, b: m(b[0]), make_batches(2), branches={"c": "blocks.*.cross.inner"},
                   targets={"a": "blocks.*.adapter"})
    with pytest.raises(gf.LossError, match="returned a float"):
        gf.compare(make_net(), lambda m, b: 1.0, make_batches(2), branches={"c": "blocks.*.cross.inner"},
                   targets={"a": "blocks.*.adapter"})


def test_bad_branch_mode_and_too_many_batches():
    with pytest.raises(gf.SubjectError, match="mode 'off' is unknown"):
        gf.Branch("x", mode="off")
    with pytest.raises(gf.SubjectError, match="asked for 5 batches but the subject has 2"):
        gf.compare(subject(), batches=5)


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--ablate", "nope"], "unknown branch 'nope'"),
        (["--target", "nope"], "unknown target 'nope'"),
        (["--set", "depth"], "--set expects key=value"),
        (["--set", "colour=red"], "unknown toy override"),
        (["--preset", "x", "--weights", "w.pt"], "does not accept --weights"),
    ],
)
def test_cli_bad_input_exits_2_and_writes_nothing(tmp_path, args, fragment):
    out = tmp_path / "run.json"
    result = CliRunner().invoke(app, ["compare", "--subject", TOY, "--out", str(out), *args])
    assert result.exit_code == 2, result.output
    assert fragment in " ".join(result.output.split())
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_cli_unknown_subject_and_missing_out_folder(tmp_path):
    result = CliRunner().invoke(app, ["compare", "--subject", "nosuch"])
    assert result.exit_code == 2 and "Built-in and installed subjects: aaclip" in " ".join(result.output.split())
    result = CliRunner().invoke(app, ["compare", "--subject", TOY, "--out", str(tmp_path / "no" / "run.json")])
    assert result.exit_code == 2 and "does not exist" in result.output


@pytest.mark.parametrize("scales", ["1,,2", "0.5,x", "1,inf", ""])
def test_cli_bad_scales_exit_2(scales):
    result = CliRunner().invoke(app, ["sweep", "--subject", TOY, "--branch", "cross", "--scales", scales])
    assert result.exit_code == 2, result.output
    assert "--scales" in result.output
