"""A probe kept open over a training loop: every number still equals plain autograd after the things loops do
(zero_grad, a backward that raises, reentrant checkpointing, a module returning a leaf, .grad edited through
.data, re-entering the probe, a hook added midway)."""

from __future__ import annotations

import pytest
import torch
from reference_models import norm_of, rel_err
from torch import nn
from torch.utils.checkpoint import checkpoint

import gradflow as gf

TOL = 1e-9



def mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 1)).double()


def batches(n: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return [torch.randn(5, 4, generator=generator, dtype=torch.float64) for _ in range(n)]


def test_zero_grad_before_the_probe_exits():
    net = mlp()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    with gf.probe(net, "0") as p:
        for x in batches(2):
            net(x).sum().backward()
            optimizer.step()
            optimizer.zero_grad()
    assert p.accumulated_norms() == {"0": None}  # .grad is None at exit
    assert p.n_backward == 2


def test_a_backward_that_raises_does_not_freeze_the_probe():
    net = mlp()
    fail = {"now": False}

    def maybe_fail(_grad):
        if fail["now"]:
            raise RuntimeError("simulated out of memory")

    xs = batches(3)
    expected = [norm_of(torch.autograd.grad(net(x).sum(), list(net[0].parameters()))) for x in xs]
    with gf.probe(net, ["0", "2"]) as p:
        for step, x in enumerate(xs):
            out = net(x)
            out.register_hook(maybe_fail)
            fail["now"] = step == 1
            net.zero_grad(set_to_none=True)
            try:
                out.sum().backward()
            except RuntimeError:
                continue
            assert rel_err(p.norms()["0"], expected[step]) < TOL
    assert p.n_backward == 2
    assert any("raised" in note for note in p.notes)


class Checkpointed(nn.Module):
    def __init__(self, reentrant: bool) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a, self.ck, self.c = nn.Linear(5, 5), nn.Linear(5, 5), nn.Linear(5, 5)
        self.double()
        self.reentrant = reentrant

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = checkpoint(self.ck, self.a(x), use_reentrant=self.reentrant)
        return self.c(torch.tanh(h))


@pytest.mark.parametrize("forward_inside", [True, False])
def test_reentrant_checkpoint_region_first_is_one_backward(forward_inside):
    # the probed modules' first gradient arrives inside the region's own (nested) backward
    net = Checkpointed(reentrant=True)
    x = torch.randn(3, 5, dtype=torch.float64)
    net(x).square().sum().backward()  # reentrant checkpointing cannot run under torch.autograd.grad
    expected = {name: norm_of([q.grad for q in getattr(net, name).parameters()]) for name in ("a", "ck")}
    for _ in range(2):
        net.zero_grad(set_to_none=True)
        loss = None if forward_inside else net(x).square().sum()
        with gf.probe(net, ["a", "ck"]) as p:
            (loss if loss is not None else net(x).square().sum()).backward()
        assert p.n_backward == 1
        for name in ("a", "ck"):
            assert rel_err(p.norms()[name], expected[name]) < TOL
            assert rel_err(p.accumulated_norms()[name], expected[name]) < TOL


def test_reentrant_region_output_norms_equal_the_plain_model():
    net, plain = Checkpointed(reentrant=True), Checkpointed(reentrant=False)
    x = torch.randn(3, 5, dtype=torch.float64)
    with gf.probe(plain, ["a", "ck"]) as expected:
        plain(x).square().sum().backward()
    with gf.probe(net, ["a", "ck"]) as p:
        net(x).square().sum().backward()
    for name, value in expected.output_norms().items():
        assert rel_err(p.output_norms()[name], value) < TOL


class LearnedQueries(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.queries = nn.Parameter(torch.randn(3, 4, dtype=torch.float64))

    def forward(self) -> torch.Tensor:
        return self.queries  # a leaf: it outlives every backward


def test_a_module_returning_a_leaf_is_measured_once_per_step():
    torch.manual_seed(0)
    net = nn.ModuleDict({"pos": LearnedQueries(), "lin": nn.Linear(4, 4).double()})
    with gf.probe(net, ["pos"]) as p:
        for x in batches(3):
            x = x[:3]
            loss = net["lin"](x + net["pos"]()).square().sum()
            (expected,) = torch.autograd.grad(loss, [net["pos"].queries], retain_graph=True)
            net.zero_grad(set_to_none=True)
            loss.backward()
            assert rel_err(p.output_norms()["pos"], norm_of([expected])) < TOL
    assert not net["pos"].queries._backward_hooks


def test_accumulated_norms_see_grad_edited_through_data():
    net = mlp()
    with gf.probe(net, "0") as p:
        net(batches(1)[0]).sum().backward()
        for param in net[0].parameters():
            param.grad.data.mul_(0.25)
    assert rel_err(p.accumulated_norms()["0"], norm_of([q.grad for q in net[0].parameters()])) < TOL


def test_a_probe_entered_again_reads_grad_at_its_second_exit():
    net = mlp()
    probe = gf.Probe(net, "0")
    for x in batches(2):
        net.zero_grad(set_to_none=True)
        with probe:
            net(x).sum().backward()
        assert rel_err(probe.accumulated_norms()["0"], norm_of([q.grad for q in net[0].parameters()])) < TOL


def test_a_hook_added_inside_the_probe_gives_one_meaning_per_backward():
    # per-backward norms are the gradient as it reaches the probe's hook, on every backward alike
    net = mlp()
    x = batches(1)[0]
    raw = norm_of(torch.autograd.grad(net(x).sum(), list(net[0].parameters())))
    with gf.probe(net, "0", outputs=False) as p:
        net[0].weight.register_hook(lambda grad: grad * 10)  # the user's, added after the probe's
        for _ in range(2):
            net(x).sum().backward()
    assert [n["0"] for n in p.backward_norms()] == pytest.approx([raw, raw], rel=TOL)


class LoraLike(nn.Module):
    """peft's layout: the adapter weight sits in a ModuleDict that is never called itself."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.base = nn.Linear(4, 4).double()
        self.lora_B = nn.ModuleDict({"default": nn.Linear(4, 4, bias=False).double()})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.lora_B["default"](x)


def test_a_container_selector_probes_the_modules_inside_it():
    net = LoraLike()
    x = batches(1)[0]
    out = net.lora_B["default"](x)
    (expected,) = torch.autograd.grad((net.base(x) + out).square().sum(), [out])
    with gf.probe(net, "**.lora_B") as p:
        net(x).square().sum().backward()
    assert rel_err(p.output_norms()["lora_B.default"], norm_of([expected])) < TOL
    assert any("container" in note for note in p.notes)


def test_preflight_paths_do_not_walk_dunder_attributes():
    from gradflow.preflight import _MISSING, _attribute

    assert _attribute(mlp(), "__class__.__init__.__globals__")[0] is _MISSING
    assert _attribute(mlp(), "training")[0] is True
