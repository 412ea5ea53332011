"""Every number compare() and probe() report, recomputed independently with torch.autograd.grad."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from reference_models import make_batches, make_net, mse, reference_norm, rel_err

import gradflow as gf

TOL = 1e-6


def adapter_params(net, index=None):
    blocks = net.blocks if index is None else [net.blocks[index]]
    return [p for b in blocks for p in b.adapter.parameters()]


@pytest.mark.parametrize("branch", ["linear", "tuple", "mha"])
@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_compare_matches_model_switch(branch, dropout):
    net = make_net(branch=branch, dropout=dropout).train()
    seq = 5 if branch == "mha" else 0
    batches = make_batches(4, seq=seq)
    record = gf.compare(net, mse, batches, branches={"cross": "blocks.*.cross.inner"},
                        targets={"adapter": "blocks.*.adapter"}, seed=3)
    seeds = record.data["batches"]["pass_seeds"]
    with_ = [reference_norm(net, b, adapter_params(net), s) for b, s in zip(batches, seeds, strict=True)]
    without = [reference_norm(net, b, adapter_params(net), s, enabled=False)
               for b, s in zip(batches, seeds, strict=True)]
    assert rel_err(record.norms("adapter")["with"], np.mean(with_)) < TOL
    assert rel_err(record.norms("adapter")["without"]["cross"], np.mean(without)) < TOL
    assert rel_err(record.retention("cross", "adapter"), np.mean(with_) / np.mean(without)) < TOL
    row = next(r for r in record.rows if r["module"] == "*")
    for got, w, wo in zip(row["per_batch"], with_, without, strict=True):
        assert rel_err(got, w / wo) < TOL
    # per-module rows: each adapter on its own
    for i in range(3):
        params = adapter_params(net, i)
        w = np.mean([reference_norm(net, b, params, s) for b, s in zip(batches, seeds, strict=True)])
        wo = np.mean([reference_norm(net, b, params, s, enabled=False) for b, s in zip(batches, seeds, strict=True)])
        assert rel_err(record.retention("cross", "adapter", f"blocks.{i}.adapter"), w / wo) < TOL


def test_interval_matches_independent_jackknife():
    """The retention interval: jackknife SE of log(mean with / mean without), Student t with N-1 df."""
    from scipy import stats

    net = make_net()
    batches = make_batches(5)
    record = gf.compare(net, mse, batches, branches={"cross": "blocks.*.cross.inner"},
                        targets={"adapter": "blocks.*.adapter"}, seed=11)
    seeds = record.data["batches"]["pass_seeds"]
    w = np.array([reference_norm(net, b, adapter_params(net), s) for b, s in zip(batches, seeds, strict=True)])
    wo = np.array([reference_norm(net, b, adapter_params(net), s, enabled=False)
                   for b, s in zip(batches, seeds, strict=True)])
    leave_out = [np.log(np.delete(w, i).mean() / np.delete(wo, i).mean()) for i in range(5)]
    se = np.sqrt(4 / 5 * np.sum((np.array(leave_out) - np.mean(leave_out)) ** 2))
    center = np.log(w.mean() / wo.mean())
    t = stats.t.ppf(0.975, 4)
    got_low, got_high = record.ci("cross", "adapter")
    assert rel_err(got_low, np.exp(center - t * se)) < TOL and rel_err(got_high, np.exp(center + t * se)) < TOL
    assert got_low <= record.retention("cross", "adapter") <= got_high
    assert record.data["interval"]["method"].startswith("jackknife-log-t")


def test_scale_mode_and_sweep_match_model_factor():
    net = make_net(dropout=0.2).train()
    batches = make_batches(3)
    record = gf.sweep(gf.Subject(net, mse, batches, branches={"cross": "blocks.*.cross.inner"},
                                 targets={"adapter": "blocks.*.adapter"}), "cross", [0.1, 0.5], seed=2)
    seeds = record.data["batches"]["pass_seeds"]
    params = adapter_params(net)
    zero = np.mean([reference_norm(net, b, params, s, enabled=False) for b, s in zip(batches, seeds, strict=True)])
    for scale in (0.1, 0.5):
        scaled = np.mean([reference_norm(net, b, params, s, factor=scale) for b, s in zip(batches, seeds, strict=True)])
        assert rel_err(record.retention("cross", "adapter", scale=scale), scaled / zero) < TOL


def test_shared_weights_counted_once_and_in_each_module():
    net = make_net()
    batches = make_batches(2)
    record = gf.compare(net, mse, batches, branches={"cross": "blocks.*.cross.inner"},
                        targets={"tied": ["head", "tail"]}, seed=0)
    seeds = record.data["batches"]["pass_seeds"]
    shared = [net.head.weight]
    expected = np.mean([reference_norm(net, b, shared, s) for b, s in zip(batches, seeds, strict=True)])
    assert record.data["targets"]["tied"]["n_params"] == net.head.weight.numel()
    for module in ("*", "head", "tail"):
        assert rel_err(record.norms("tied", module)["with"], expected) < TOL


def test_probe_parameter_and_output_norms_match_autograd():
    net = make_net(branch="tuple")
    x, y = make_batches(1)[0]
    # reference: d loss / d (body output) through a zero tensor added to it, before the in-place ReLU
    zeros = [torch.zeros(4, 6, dtype=torch.float64, requires_grad=True) for _ in net.blocks]
    for block, z in zip(net.blocks, zeros, strict=True):
        block.output_probe = z
    loss = mse(net, (x, y))
    out_grads = torch.autograd.grad(loss, zeros, retain_graph=True)
    bodies = [p for b in net.blocks for p in b.body.parameters()]
    param_grads = torch.autograd.grad(loss, bodies)
    for block in net.blocks:
        block.output_probe = None

    with gf.probe(net, "blocks.*.body") as p:
        mse(net, (x, y)).backward()
    norms, outputs = p.norms(), p.output_norms()
    for i in range(3):
        expected = torch.cat([g.flatten() for g in param_grads[2 * i: 2 * i + 2]]).norm().item()
        assert rel_err(norms[f"blocks.{i}.body"], expected) < TOL
        assert rel_err(outputs[f"blocks.{i}.body"], out_grads[i].norm().item()) < TOL


def test_probe_tuple_output_and_multihead_attention():
    net = make_net(branch="mha")
    batch = make_batches(1, seq=5)[0]
    with gf.probe(net, [torch.nn.MultiheadAttention, "blocks.*.cross.inner"]) as p:
        loss = mse(net, batch)
        loss.backward()
    attn_params = list(net.blocks[1].cross.inner.attn.parameters())
    net.zero_grad()
    expected = torch.cat([g.flatten() for g in torch.autograd.grad(mse(net, batch), attn_params)]).norm().item()
    assert rel_err(p.norms()["blocks.1.cross.inner.attn"], expected) < TOL
    assert p.output_norms()["blocks.1.cross.inner"] is not None


def test_no_gradient_is_none_never_zero():
    net = make_net()
    net.out.weight.requires_grad_(False)
    batch = make_batches(1)[0]
    with gf.probe(net, ["blocks.0.adapter", "blocks.1.adapter"]) as p:
        mse(net, batch).detach().requires_grad_().backward()  # graph cut: nothing upstream gets grad
        loss = net.blocks[1].adapter(batch[0]).sum()  # a second backward that reaches only blocks.1.adapter
        loss.backward()
    assert p.norms()["blocks.0.adapter"] is None
    assert p.norms()["blocks.1.adapter"] > 0
    assert p.output_norms(allow_unobserved=False)["blocks.0.adapter"] is None  # its forward ran, no gradient
    assert p.accumulated_norms()["blocks.0.adapter"] is None
    assert p.n_backward == 1  # the cut graph reached no probed tensor: not counted as an observed backward


def test_branch_target_with_no_grad_when_ablated():
    net = make_net()
    record = gf.compare(net, mse, make_batches(2), branches={"cross": "blocks.*.cross.inner"},
                        targets={"cross_params": "blocks.*.cross.inner"})
    row = next(r for r in record.rows if r["module"] == "*")
    assert row["status"] == "no_grad" and row["retention"] is None and row["norm_with"] is None
    assert np.isnan(record.retention("cross", "cross_params"))


def test_branch_off_the_gradient_path_is_no_effect():
    """A branch whose output never reaches the loss cannot change a target's gradient: no_effect, and the
    norms are the exact autograd norms (identical with and without the branch)."""

    class TwoHeads(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.trunk = torch.nn.Linear(6, 6)
            self.side = torch.nn.Linear(6, 6)  # runs, but its head is not in the loss
            self.side_head = torch.nn.Linear(6, 1)
            self.head = torch.nn.Linear(6, 1)

        def forward(self, x):
            h = torch.tanh(self.trunk(x))
            self.side_out = self.side_head(h + self.side(h))
            return self.head(h)

    torch.manual_seed(0)
    net = TwoHeads().double()
    batches = make_batches(3)
    record = gf.compare(net, mse, batches, branches={"side": "side"}, targets={"trunk": "trunk"})
    row = next(r for r in record.rows if r["module"] == "*")
    assert row["status"] == "no_effect" and row["retention"] == 1.0
    expected = np.mean([torch.cat([g.flatten() for g in torch.autograd.grad(mse(net, b), list(net.trunk.parameters()))])
                        .norm().item() for b in batches])
    assert rel_err(row["norm_with"], expected) < TOL and row["norm_with"] == row["norm_without"]
    late = gf.compare(net, mse, batches, branches={"trunk": "trunk"}, targets={"head": "head"})
    assert next(r for r in late.rows if r["module"] == "*")["status"] == "ok"  # on the path: not no_effect


def test_nan_and_inf_are_reported_not_crashed_on():
    net = make_net()
    batches = make_batches(2)
    batches[1] = (batches[1][0] * float("inf"), batches[1][1])
    record = gf.compare(net, mse, batches, branches={"cross": "blocks.*.cross.inner"},
                        targets={"adapter": "blocks.*.adapter"})
    row = next(r for r in record.rows if r["module"] == "*")
    assert row["status"] == "non_finite"
    record.to_json()  # still strict JSON


def test_identity_mode_equals_removing_the_module():
    torch.manual_seed(0)
    inline = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Tanh(), torch.nn.Linear(4, 4)).double()
    batch = (torch.randn(3, 4, dtype=torch.float64), torch.randn(3, 4, dtype=torch.float64))

    def loss_fn(m, b):
        return (m(b[0]) - b[1]).pow(2).sum()

    record = gf.compare(inline, loss_fn, [batch], branches={"tanh": gf.Branch("1", mode="identity")},
                        targets={"first": "0"})
    x, y = batch
    w = inline[0].weight
    full = torch.autograd.grad(loss_fn(inline, batch), [w, inline[0].bias])
    bypass = torch.autograd.grad(((inline[2](inline[0](x)) - y).pow(2).sum()), [w, inline[0].bias])
    norm = lambda gs: torch.cat([g.flatten() for g in gs]).norm().item()  # noqa: E731
    assert rel_err(record.retention("tanh", "first"), norm(full) / norm(bypass)) < TOL
