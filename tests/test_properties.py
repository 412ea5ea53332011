"""Property-based: on random small module trees, engine numbers equal the independent computation."""

from __future__ import annotations

import math

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reference_models import Switchable, rel_err
from torch import nn

import gradflow as gf

WIDTH = 4


@st.composite
def module_trees(draw, depth=0):
    """A random tree of Sequential / Linear / Tanh / residual Switchable(Linear) modules."""
    kinds = ["linear", "tanh", "switch"] + (["seq"] if depth < 2 else [])
    n_children = draw(st.integers(1, 3))
    children = []
    for _ in range(n_children):
        kind = draw(st.sampled_from(kinds))
        if kind == "linear":
            children.append(nn.Linear(WIDTH, WIDTH, bias=draw(st.booleans())))
        elif kind == "tanh":
            children.append(nn.Tanh())
        elif kind == "switch":
            children.append(Switchable(nn.Linear(WIDTH, WIDTH)))
        else:
            children.append(draw(module_trees(depth=depth + 1)))
    return nn.Sequential(*children)


def _norm(loss, params):
    grads = [g for g in torch.autograd.grad(loss, params, allow_unused=True) if g is not None]
    return math.sqrt(sum(float(g.pow(2).sum()) for g in grads)) if grads else None


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tree=module_trees(), seed=st.integers(0, 2**16), data=st.data())
def test_random_trees_match_autograd(tree, seed, data):
    torch.manual_seed(seed)
    model = nn.Sequential(tree, nn.Linear(WIDTH, 1)).double()
    for m in model.modules():  # fresh init in float64 after .double()
        if isinstance(m, nn.Linear):
            m.reset_parameters()
    switches = [n for n, m in model.named_modules() if isinstance(m, Switchable)]
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    targets = data.draw(st.lists(st.sampled_from(linears), min_size=1, max_size=3, unique=True))
    generator = torch.Generator().manual_seed(seed)
    batches = [torch.randn(3, WIDTH, dtype=torch.float64, generator=generator) for _ in range(2)]

    def loss_fn(m, x):
        return m(x).pow(2).sum()

    params = [p for name in targets for p in model.get_submodule(name).parameters()]
    # probe: parameter norms of each target module after one backward
    with gf.probe(model, targets) as p:
        loss_fn(model, batches[0]).backward()
    for name in targets:
        expected = _norm(loss_fn(model, batches[0]), list(model.get_submodule(name).parameters()))
        got = p.norms()[name]
        assert (got is None) == (expected is None)
        if expected is not None and expected > 0:
            assert rel_err(got, expected) < 1e-6
    if not switches:
        return
    branch = data.draw(st.sampled_from(switches))
    record = gf.compare(model, loss_fn, batches, branches={"b": branch + ".inner"}, targets={"t": targets})
    switch = model.get_submodule(branch)
    with_ = [_norm(loss_fn(model, x), params) for x in batches]
    switch.enabled = False
    without = [_norm(loss_fn(model, x), params) for x in batches]
    switch.enabled = True
    row = next(r for r in record.rows if r["module"] == "*")
    if any(v is None for v in with_ + without):
        assert row["status"] == "no_grad"
        return
    assert rel_err(row["norm_with"], sum(with_) / 2) < 1e-6
    assert rel_err(row["norm_without"], sum(without) / 2) < 1e-6
    if sum(without) > 0:
        assert rel_err(row["retention"], sum(with_) / sum(without)) < 1e-6
