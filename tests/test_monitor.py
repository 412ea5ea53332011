"""gradflow.Monitor in a plain loop: checks equal gf.compare by hand, training is bit-identical with and without
the monitor, per-step norms equal the real .grad, on_fail stops or warns."""

from __future__ import annotations

import math

import pytest
import torch
from reference_models import make_batches, make_net, mse, rel_err

import gradflow as gf

BRANCHES = {"cross": "blocks.*.cross.inner"}
TARGETS = {"adapter": "blocks.*.adapter"}


def train(net, batches, steps, monitor=None):
    optimizer = torch.optim.Adam(net.parameters(), lr=0.01)
    torch.manual_seed(123)
    snapshots = {}
    for step in range(1, steps + 1):
        loss = mse(net, batches[step % len(batches)])
        loss.backward()
        if monitor is not None:
            monitor.log_grad_norms(step)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if monitor is not None and monitor.due(step):
            snapshots[step] = {n: p.detach().clone() for n, p in net.named_parameters()}
            monitor.step(step, batches[step % len(batches)])
    return snapshots


def test_checks_equal_compare_by_hand_and_training_is_bit_identical():
    batches = make_batches(6)
    held_out = make_batches(3, seed=9)
    plain = make_net(dropout=0.2).train()
    train(plain, batches, 8)
    logged = []
    net = make_net(dropout=0.2).train()
    monitor = gf.Monitor(net, mse, branches=BRANCHES, targets=TARGETS, every=4, batches=held_out,
                         logger=lambda name, value, step: logged.append((name, value, step)))
    snapshots = train(net, batches, 8, monitor)
    for (name, a), b in zip(plain.named_parameters(), net.parameters(), strict=True):
        assert torch.equal(a, b), name  # the monitor changed nothing in training, RNG stream included
    assert sorted(snapshots) == [4, 8]
    for step, weights in snapshots.items():
        reference = make_net(dropout=0.2).train()
        with torch.no_grad():
            for name, param in reference.named_parameters():
                param.copy_(weights[name])
        expected = gf.compare(reference, mse, held_out, branches=BRANCHES, targets=TARGETS).retention("cross",
                                                                                                        "adapter")
        got = [v for n, v, s in logged if n == "retention/cross/adapter" and s == step]
        assert len(got) == 1 and rel_err(got[0], expected) < 1e-6


def test_per_step_grad_norms_are_the_real_grad():
    net = make_net()
    monitor = gf.Monitor(net, mse, branches=BRANCHES, targets=TARGETS, every=100)
    mse(net, make_batches(1)[0]).backward()
    norms = monitor.grad_norms()
    for i in range(3):
        grads = [p.grad for p in net.blocks[i].adapter.parameters()]
        expected = math.sqrt(sum(float(g.pow(2).sum()) for g in grads))
        assert rel_err(norms[f"grad_norm/adapter/blocks.{i}.adapter"], expected) < 1e-12


def test_on_fail_stop_and_warn():
    batches = make_batches(3)
    stop = gf.Monitor(make_net(), mse, branches=BRANCHES, targets=TARGETS, every=1, batches=batches,
                      band=gf.Band(100.0), on_fail="stop")
    with pytest.raises(gf.RetentionFailure, match="outside the band"):
        stop.step(1)
    warn = gf.Monitor(make_net(), mse, branches=BRANCHES, targets=TARGETS, every=1, batches=batches,
                      band=gf.Band(100.0), on_fail="warn")
    with pytest.warns(UserWarning, match="outside the band"):
        warn.step(1)
    assert warn.failed and warn.failed[0]["step"] == 1


def test_bad_arguments_are_refused():
    with pytest.raises(gf.SubjectError, match="every"):
        gf.Monitor(make_net(), mse, branches=BRANCHES, targets=TARGETS, every=0)
    with pytest.raises(gf.SelectorError):
        gf.Monitor(make_net(), mse, branches={"x": "nope.*"}, targets=TARGETS)
    with pytest.raises(gf.SubjectError, match="needs a batch"):
        gf.Monitor(make_net(), mse, branches=BRANCHES, targets=TARGETS, every=1).step(1)
