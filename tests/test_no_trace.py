"""Probing and comparing leave no trace: params, .grad, modes, RNG, hooks and requires_grad."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from reference_models import make_batches, make_net, mse

import gradflow as gf


def snapshot(model):
    return {
        "params": {n: p.detach().clone() for n, p in model.named_parameters()},
        "grads": {n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()},
        "requires_grad": {n: p.requires_grad for n, p in model.named_parameters()},
        "training": {n: m.training for n, m in model.named_modules()},
        "hooks": {n: tuple(len(getattr(m, h)) for h in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks",
                                                      "_backward_pre_hooks", "_forward_hooks_with_kwargs"))
                  for n, m in model.named_modules()},
        "tensor_hooks": {n: len(p._backward_hooks or {}) for n, p in model.named_parameters()},
        "post_hooks": {n: len(getattr(p, "_post_accumulate_grad_hooks", None) or {})
                       for n, p in model.named_parameters()},
        "torch_rng": torch.get_rng_state().clone(),
        "py_rng": random.getstate(),
        "np_rng": np.random.get_state()[1].copy(),
    }


def assert_same(before, after):
    for name, value in before["params"].items():
        assert torch.equal(value, after["params"][name]), name
    for name, value in before["grads"].items():
        other = after["grads"][name]
        assert (value is None) == (other is None), name
        if value is not None:
            assert torch.equal(value, other), name
    for key in ("requires_grad", "training", "hooks", "tensor_hooks", "post_hooks", "py_rng"):
        assert before[key] == after[key], key
    assert torch.equal(before["torch_rng"], after["torch_rng"])
    assert np.array_equal(before["np_rng"], after["np_rng"])


def prepared_net():
    net = make_net(dropout=0.3).train()
    net.blocks[1].eval()  # mixed modes must survive
    net.blocks[0].body.weight.requires_grad_(False)
    mse(net, make_batches(1)[0]).backward()  # user's own accumulated .grad
    net.blocks[2].register_forward_hook(lambda *a: None)  # user's own hook
    return net


def test_compare_leaves_no_trace():
    net = prepared_net()
    before = snapshot(net)
    gf.compare(net, mse, make_batches(3), branches={"cross": "blocks.*.cross.inner"},
               targets={"adapter": "blocks.*.adapter"})
    assert_same(before, snapshot(net))


def test_compare_leaves_no_trace_when_loss_raises_midway():
    net = prepared_net()
    before = snapshot(net)
    calls = {"n": 0}

    def flaky(model, batch):
        calls["n"] += 1
        if calls["n"] == 3:
            torch.rand(5)
            random.random()
            raise RuntimeError("boom")
        return mse(model, batch)

    with pytest.raises(RuntimeError, match="boom"):
        gf.compare(net, flaky, make_batches(3), branches={"cross": "blocks.*.cross.inner"},
                   targets={"adapter": "blocks.*.adapter"})
    assert_same(before, snapshot(net))


def test_probe_removes_hooks_on_exception():
    net = prepared_net()
    before = snapshot(net)
    with pytest.raises(ValueError), gf.probe(net, "blocks.*.adapter"):
        mse(net, make_batches(1)[0])  # forward registers output hooks
        raise ValueError("user error inside the probe")
    after = snapshot(net)
    assert before["hooks"] == after["hooks"] and before["tensor_hooks"] == after["tensor_hooks"]


def test_ablate_restores_outputs():
    net = make_net()
    x = make_batches(1)[0][0]
    reference = net(x)
    with gf.ablate(net, gf.Branch("blocks.*.cross.inner")):
        assert not torch.equal(net(x), reference)
    assert torch.equal(net(x), reference)
