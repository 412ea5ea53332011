"""The learning probe: curves equal a hand-written training loop, the model comes back exactly, bad input is
refused, divergence is recorded, and learn records render."""

from __future__ import annotations

import json
import math

import pytest
import torch
from reference_models import make_batches, make_net, mse
from test_no_trace import assert_same, prepared_net, snapshot
from typer.testing import CliRunner

import gradflow as gf
from gradflow.cli.app import app
from gradflow.learning import EVAL_SEED_OFFSET
from gradflow.passes import pass_seed

BRANCHES = {"cross": "blocks.*.cross.inner"}
TARGETS = {"adapter": "blocks.*.adapter"}


def subject(net, batches, **kwargs):
    return gf.Subject(net, mse, batches, branches=BRANCHES, targets=TARGETS, **kwargs)


def hand_written(net, batches, steps, n_train, eval_indices, lr, seed, enabled, factor=1.0, params=None):
    """Adam on every trainable parameter (or ``params``), batch s % n_train at step s, dropout seeded per step."""
    saved = {n: p.detach().clone() for n, p in net.named_parameters()}
    net.set_cross(enabled, factor)
    params = params or [p for p in net.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr)

    def evaluate():
        losses = []
        with torch.no_grad():
            for index in eval_indices:
                torch.manual_seed(pass_seed(seed + EVAL_SEED_OFFSET, index))
                losses.append(mse(net, batches[index]).item())
        return sum(losses) / len(losses)

    train, evals = [], [evaluate()]
    for step in range(steps):
        torch.manual_seed(pass_seed(seed, step))
        loss = mse(net, batches[step % n_train])
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        train.append(loss.item())
        for p, g in zip(params, grads, strict=True):
            p.grad = g
        opt.step()
        for p in params:
            p.grad = None
        evals.append(evaluate())
    net.set_cross(True, 1.0)
    with torch.no_grad():
        for n, p in net.named_parameters():
            p.copy_(saved[n])
    return train, evals


def test_curves_equal_a_hand_written_loop():
    net = make_net(dropout=0.2).train()
    batches = make_batches(7)
    record = gf.learn(subject(net, batches), "cross", steps=6, lr=0.01, eval_batches=2, eval_every=1, seed=3,
                      scales=[0.5])
    runs = record.data["learning"]["runs"]
    for name, enabled, factor in (("with", True, 1.0), ("without:cross", False, 1.0), ("scale=0.5:cross", True, 0.5)):
        train, evals = hand_written(net, batches, 6, 5, [5, 6], 0.01, 3, enabled, factor)
        assert max(abs(a - b) for a, b in zip(runs[name]["train_loss"], train, strict=True)) < 1e-10, name
        assert max(abs(a - b) for a, b in zip(runs[name]["eval_loss"], evals, strict=True)) < 1e-10, name
    row = record.data["learning"]["rows"][0]
    first, last = runs["with"]["eval_first"], runs["with"]["eval_last"]
    assert row["decrease_with"] == pytest.approx(sum(first) / 2 - sum(last) / 2, abs=1e-12)


def test_training_only_the_targets_equals_a_loop_over_their_parameters():
    net = make_net(dropout=0.2).train()
    batches = make_batches(7)
    record = gf.learn(subject(net, batches), "cross", steps=5, lr=0.01, eval_batches=2, eval_every=1, seed=1,
                      train="targets")
    adapters = [p for b in net.blocks for p in b.adapter.parameters()]
    for name, enabled in (("with", True), ("without:cross", False)):
        train, evals = hand_written(net, batches, 5, 5, [5, 6], 0.01, 1, enabled, params=adapters)
        assert max(abs(a - b) for a, b in zip(record.data["learning"]["runs"][name]["eval_loss"], evals,
                                              strict=True)) < 1e-10
    assert record.data["learning"]["train"] == "targets"


def test_target_norms_per_step_equal_autograd():
    net = make_net()
    batches = make_batches(5)
    record = gf.learn(subject(net, batches), "cross", steps=1, lr=1e-9, eval_batches=2, seed=0)
    params = [p for b in net.blocks for p in b.adapter.parameters()]
    torch.manual_seed(pass_seed(0, 0))
    grads = torch.autograd.grad(mse(net, batches[0]), params)
    expected = math.sqrt(sum(float(g.pow(2).sum()) for g in grads))
    assert record.data["learning"]["runs"]["with"]["target_norms"]["adapter"][0] == pytest.approx(expected, rel=1e-9)


def test_model_is_restored_exactly_also_on_errors():
    net = prepared_net()
    before = snapshot(net)
    gf.learn(subject(net, make_batches(5)), "cross", steps=3, lr=0.1, eval_batches=2, scales=[0.3])
    assert_same(before, snapshot(net))
    calls = {"n": 0}

    def flaky(model, batch):
        calls["n"] += 1
        if calls["n"] == 5:
            raise RuntimeError("boom")
        return mse(model, batch)

    with pytest.raises(RuntimeError, match="boom"):
        gf.learn(gf.Subject(net, flaky, make_batches(5), branches=BRANCHES, targets=TARGETS), "cross", steps=3,
                 lr=0.1, eval_batches=2)
    assert_same(before, snapshot(net))


@pytest.mark.parametrize(("kwargs", "fragment"), [({"steps": 0}, "steps must be"), ({"optimizer": "lion"}, "lion"),
                                                  ({"lr": float("nan")}, "lr must be"),
                                                  ({"eval_batches": 1}, "at least 2")])
def test_bad_input_is_refused(kwargs, fragment):
    args = {"steps": 2, **kwargs}
    with pytest.raises(gf.SubjectError, match=fragment):
        gf.learn(subject(make_net(), make_batches(4)), "cross", **args)


def test_a_loss_that_goes_nan_is_recorded_as_diverged(tmp_path):
    calls = {"n": 0}

    def exploding(model, batch):
        loss = mse(model, batch)
        if torch.is_grad_enabled():
            calls["n"] += 1
            if calls["n"] == 3:
                return loss * float("nan")
        return loss

    record = gf.learn(gf.Subject(make_net(), exploding, make_batches(6), branches=BRANCHES, targets=TARGETS),
                      "cross", steps=4, lr=0.01, eval_batches=2)
    runs = record.data["learning"]["runs"]
    assert runs["with"]["status"] == "diverged" and runs["with"]["diverged_at"] == 2
    row = record.data["learning"]["rows"][0]
    assert row["status"] == "diverged" and row["learning_ratio"] is None and "step 2" in row["note"]
    path = record.save(tmp_path / "learn.json")
    assert gf.load_run(path).data["learning"]["rows"][0]["status"] == "diverged"


def test_cli_learn_writes_a_record_that_reports_render(tmp_path):
    out = tmp_path / "learn.json"
    result = CliRunner().invoke(app, ["learn", "--subject", "tests.toy_subject:make_subject", "--ablate", "cross",
                                      "--steps", "4", "--lr", "0.01", "--eval-batches", "2", "--scales", "0.5",
                                      "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "learning ratio" in result.output and "held-out curve" in result.output
    data = json.loads(out.read_text())
    assert data["kind"] == "learn" and set(data["learning"]["runs"]) == {"with", "without:cross", "scale=0.5:cross"}
    for extra in ((), ("--markdown",), ("--json",), ("--html", str(tmp_path / "l.html"))):
        shown = CliRunner().invoke(app, ["report", str(out), *extra])
        assert shown.exit_code == 0, shown.output
    assert "Learning" in (tmp_path / "l.html").read_text()
    bad = CliRunner().invoke(app, ["learn", "--subject", "tests.toy_subject:make_subject", "--steps", "0",
                                   "--out", str(tmp_path / "no.json")])
    assert bad.exit_code == 2 and not (tmp_path / "no.json").exists()
