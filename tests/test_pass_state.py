"""compare() on models whose forward changes state or whose outputs hide tensors: every setting of a batch
starts from the same buffers, generator and batch, the model is left as it was, and what cannot be ablated or
observed is refused, never reported as "no effect"."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from reference_models import norm_of, rel_err
from torch import nn

import gradflow as gf
from gradflow.passes import pass_seed

TOL = 1e-9


def zero_output(_module, _inputs, output):
    return torch.zeros_like(output)



def reference_retention(model, loss_fn, batches, branch, target, before_pass=lambda _i: None):
    """mean ||d loss / d target|| with the branch over the mean without, each pass from ``before_pass``."""
    params = list(target.parameters())
    norms = {True: [], False: []}
    for with_branch in (True, False):
        for index, batch in enumerate(batches):
            before_pass(index)
            handle = None if with_branch else branch.register_forward_hook(zero_output)
            norms[with_branch].append(norm_of(torch.autograd.grad(loss_fn(model, batch), params)))
            if handle is not None:
                handle.remove()
    return sum(norms[True]) / sum(norms[False])


def state_of(model):
    return {name: t.detach().clone() for name, t in [*model.state_dict().items()]}


def assert_same_state(before, model):
    after = state_of(model)
    assert before.keys() == after.keys()
    for name, value in before.items():
        assert torch.equal(value, after[name]), name


class Residual(nn.Module):
    """trunk -> (+ branch) -> norm -> target, float64."""

    def __init__(self, norm: nn.Module | None = None) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.trunk, self.branch, self.target = nn.Linear(6, 6), nn.Linear(6, 6), nn.Linear(6, 1)
        self.norm = norm if norm is not None else nn.Identity()
        self.double()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.trunk(x))
        return self.target(self.norm(h + self.branch(h)))


def mse(model, batch):
    return model(batch).square().mean()


def batches(n: int = 3) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(5)
    return [torch.randn(4, 6, generator=generator, dtype=torch.float64) for _ in range(n)]


def test_batchnorm_statistics_are_left_as_they_were():
    net = Residual(nn.BatchNorm1d(6).double()).train()
    before = state_of(net)
    record = gf.compare(net, mse, batches(), branches={"b": "branch"}, targets={"t": "target"})
    assert_same_state(before, net)
    assert rel_err(record.retention("b", "t"), reference_retention(net, mse, batches(), net.branch, net.target)) < TOL


def test_spectral_norm_passes_start_from_the_same_power_iteration():
    net = Residual()
    net.branch = nn.utils.spectral_norm(net.branch)  # its u vector moves with every training-mode forward
    before = state_of(net)
    saved_u = net.branch.weight_u.clone()

    def restore_u(_index):
        with torch.no_grad():
            net.branch.weight_u.copy_(saved_u)

    record = gf.compare(net, mse, batches(), branches={"b": "branch"}, targets={"t": "target"})
    assert_same_state(before, net)
    expected = reference_retention(net, mse, batches(), net.branch, net.target, restore_u)
    assert rel_err(record.retention("b", "t"), expected) < TOL


class Noisy(Residual):
    def __init__(self) -> None:
        super().__init__()
        self.noise = torch.Generator().manual_seed(42)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.trunk(x)) + 0.5 * torch.randn(x.shape, generator=self.noise, dtype=x.dtype)
        return self.target(h + self.branch(h))


def test_a_modules_own_generator_draws_the_same_noise_in_both_passes():
    net = Noisy()
    state = net.noise.get_state()
    record = gf.compare(net, mse, batches(), branches={"b": "branch"}, targets={"t": "target"}, seed=7)
    assert torch.equal(net.noise.get_state(), state)
    expected = reference_retention(net, mse, batches(), net.branch, net.target,
                                   lambda index: net.noise.manual_seed(pass_seed(7, index)))
    assert rel_err(record.retention("b", "t"), expected) < TOL


def test_a_loss_that_pops_from_its_batch_sees_the_whole_batch_every_pass():
    net = Residual()

    def loss_fn(model, batch):
        target = batch.pop("labels")
        return (model(batch["x"]) - target).square().mean()

    data = [{"x": x, "labels": x[:, :1]} for x in batches()]
    record = gf.compare(net, loss_fn, data, branches={"b": "branch"}, targets={"t": "target"})
    assert all("labels" in batch for batch in data)

    def plain(model, batch):
        return (model(batch["x"]) - batch["labels"]).square().mean()

    assert rel_err(record.retention("b", "t"), reference_retention(net, plain, data, net.branch, net.target)) < TOL


def test_a_loss_that_changes_its_batch_in_place_is_refused():
    net = Residual()

    def loss_fn(model, x):
        x.sub_(x.mean())  # normalises the caller's tensor: the next setting would see other data
        return model(x).square().mean()

    with pytest.raises(gf.LossError, match="in place"):
        gf.compare(net, loss_fn, batches(), branches={"b": "branch"}, targets={"t": "target"})


@dataclasses.dataclass
class BranchOutput:
    hidden: torch.Tensor


class DataclassBranch(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inner = nn.Linear(6, 6).double()

    def forward(self, h: torch.Tensor) -> BranchOutput:
        return BranchOutput(self.inner(h))


class WithDataclassBranch(Residual):
    def __init__(self) -> None:
        super().__init__()
        self.branch = DataclassBranch()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.trunk(x))
        return self.target(h + self.branch(h).hidden)


def test_a_branch_output_gradflow_cannot_see_into_is_refused():
    net = WithDataclassBranch()
    with pytest.raises(gf.AblationError, match="gradflow can see"):
        gf.compare(net, mse, batches(), branches={"b": "branch"}, targets={"t": "target"})
    with gf.probe(net, ["branch", "target"]) as p:
        mse(net, batches()[0]).backward()
    with pytest.raises(gf.ProbeError, match="cannot see into"):
        p.output_norms()
    assert "branch" not in p.output_norms(allow_unobserved=True)


class ComplexBranch(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inner = nn.Linear(6, 6).double()

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return torch.fft.rfft(self.inner(h))  # complex


class WithComplexBranch(Residual):
    def __init__(self) -> None:
        super().__init__()
        self.branch = ComplexBranch()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.trunk(x))
        return self.target(h + torch.fft.irfft(self.branch(h), n=6))


def test_a_complex_branch_output_is_ablated():
    net = WithComplexBranch()
    record = gf.compare(net, mse, batches(), branches={"b": "branch"}, targets={"t": "target"})
    expected = reference_retention(net, mse, batches(), net.branch, net.target)
    assert expected != pytest.approx(1.0, abs=1e-3)
    assert rel_err(record.retention("b", "t"), expected) < TOL


class KeywordAttention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.attn = nn.MultiheadAttention(6, 2, batch_first=True).double()
        self.other = nn.Linear(6, 6).double()
        self.target = nn.Linear(6, 1).double()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        context = torch.tanh(x.flip(1))
        h, _ = self.attn(key=context, value=context, query=x)
        mixed = self.other(h)
        return self.target(mixed)


def test_identity_ablation_passes_the_query_of_an_attention_called_with_keywords():
    net = KeywordAttention()
    data = [x.reshape(2, 2, 6) for x in batches()]
    record = gf.compare(net, mse, data, branches={"attn": gf.Branch("attn", mode="identity")},
                        targets={"t": "target"})

    def passthrough(_module, args, kwargs, output):
        return kwargs["query"], output[1]

    params = list(net.target.parameters())
    with_ = [norm_of(torch.autograd.grad(mse(net, x), params)) for x in data]
    handle = net.attn.register_forward_hook(passthrough, with_kwargs=True)
    without = [norm_of(torch.autograd.grad(mse(net, x), params)) for x in data]
    handle.remove()
    assert rel_err(record.retention("attn", "t"), sum(with_) / sum(without)) < TOL


class TwoKeywordInputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.mix = nn.Bilinear(6, 6, 6).double()

    def forward(self, *, left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
        return self.mix(left, right)


def test_identity_ablation_refuses_an_ambiguous_keyword_call():
    torch.manual_seed(0)
    net = nn.ModuleDict({"pair": TwoKeywordInputs(), "target": nn.Linear(6, 1).double()})

    def loss_fn(model, x):
        return model["target"](model["pair"](left=x, right=x.flip(0))).square().mean()

    with pytest.raises(gf.AblationError, match="cannot tell which"):
        gf.compare(net, loss_fn, batches(), branches={"pair": gf.Branch("pair", mode="identity")},
                   targets={"t": "target"})


@pytest.mark.parametrize(("make_loss", "match"), [
    (lambda out: out.sum().long(), "int64"),
    (lambda out: torch.complex(out.sum(), out.sum()), "complex"),
])
def test_losses_that_cannot_be_differentiated_say_why(make_loss, match):
    net = Residual()
    with pytest.raises(gf.LossError, match=match):
        gf.compare(net, lambda model, x: make_loss(model(x)), batches(), branches={"b": "branch"},
                   targets={"t": "target"})


def test_compare_inside_inference_mode_says_so():
    net = Residual()
    with torch.inference_mode(), pytest.raises(gf.LossError, match="inference_mode"):
        gf.compare(net, mse, batches(), branches={"b": "branch"}, targets={"t": "target"})


def test_training_with_a_monitor_on_a_batchnorm_model_is_bit_identical():
    def train(monitor: gf.Monitor | None, net: nn.Module) -> dict[str, torch.Tensor]:
        optimizer = torch.optim.SGD(net.parameters(), lr=0.05)
        for step, x in enumerate(batches(6), start=1):
            mse(net, x).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if monitor is not None:
                monitor.step(step, x)
        return state_of(net)

    plain = train(None, Residual(nn.BatchNorm1d(6).double()).train())
    net = Residual(nn.BatchNorm1d(6).double()).train()
    monitored = train(gf.Monitor(net, mse, branches={"b": "branch"}, targets={"t": "target"}, every=2,
                                 batches=batches(2)), net)
    for name, value in plain.items():
        assert torch.equal(value, monitored[name]), name  # running statistics included


class BiasAttention(nn.Module):
    """Returns (output, bias) like T5's attention: later blocks reuse the bias."""

    def __init__(self) -> None:
        super().__init__()
        self.proj, self.bias = nn.Linear(6, 6).double(), nn.Parameter(torch.randn(6, dtype=torch.float64))

    def forward(self, h: torch.Tensor, bias: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        bias = self.bias if bias is None else bias
        return self.proj(h) + bias, bias


class SharedBias(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.first, self.second, self.target = BiasAttention(), BiasAttention(), nn.Linear(6, 1).double()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, bias = self.first(x)
        h = x + out
        out, _ = self.second(h, bias)
        return self.target(h + out)


@pytest.mark.parametrize("mode", ["zero", "scale"])
def test_a_tuple_output_has_only_its_first_item_switched_off(mode):
    net = SharedBias()
    branch = gf.Branch("first", mode=mode, scale=0.5 if mode == "scale" else None)
    record = gf.compare(net, mse, batches(), branches={"b": branch}, targets={"t": "target"})

    def first_only(_module, _inputs, output):
        return (torch.zeros_like(output[0]) if mode == "zero" else output[0] * 0.5), output[1]

    params = list(net.target.parameters())
    with_ = [norm_of(torch.autograd.grad(mse(net, x), params)) for x in batches()]
    handle = net.first.register_forward_hook(first_only)
    without = [norm_of(torch.autograd.grad(mse(net, x), params)) for x in batches()]
    handle.remove()
    assert rel_err(record.retention("b", "t"), sum(with_) / sum(without)) < TOL
    assert any("only its first item" in warning for warning in record.data["measurement"]["warnings"])


class NestedState(nn.Module):
    """An LSTM-like branch: (output, (h, c)); the model uses h downstream."""

    def __init__(self) -> None:
        super().__init__()
        self.cell = nn.Linear(6, 6).double()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        out = torch.tanh(self.cell(x))
        return out, (out.mean(0, keepdim=True), out.amax(0, keepdim=True))


def test_a_nested_tuple_output_also_warns_which_item_was_switched_off():
    torch.manual_seed(0)
    net = nn.ModuleDict({"branch": NestedState(), "target": nn.Linear(6, 1).double()})

    def loss_fn(model, x):
        out, (h, _) = model["branch"](x)
        return model["target"](x + out + h).square().mean()

    record = gf.compare(net, loss_fn, batches(), branches={"b": "branch"}, targets={"t": "target"})
    assert any("only its first item" in warning for warning in record.data["measurement"]["warnings"])


def test_a_sweep_at_scale_zero_says_it_is_the_reference():
    net = Residual()
    subject = gf.Subject(model=net, loss_fn=mse, batches=batches(), branches={"b": "branch"}, targets={"t": "target"})
    row = gf.sweep(subject, "b", [0.0, 0.5]).row("b", "t", scale=0.0)
    assert row["retention"] == 1.0 and "by construction" in row["note"]


class TwoAdapters(nn.Module):
    """peft's layout with two adapters, only 'second' active."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.trunk, self.target = nn.Linear(6, 6).double(), nn.Linear(6, 1).double()
        self.lora_B = nn.ModuleDict({"default": nn.Linear(6, 6).double(), "second": nn.Linear(6, 6).double()})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.trunk(x))
        return self.target(h + self.lora_B["second"](h))


def test_an_inactive_adapter_is_named_with_the_selector_that_works():
    net = TwoAdapters()
    with pytest.raises(gf.AblationError, match=r"beside it did run.*\*\*\.lora_B\.second"):
        gf.compare(net, mse, batches(), branches={"lora": "**.lora_B"}, targets={"t": "target"})
    record = gf.compare(net, mse, batches(), branches={"lora": "**.lora_B.second"}, targets={"t": "target"})
    assert record.retention("lora", "t") is not None


class NoiseInAContainer(Residual):
    """A generator held in a dict, and a buffer registered empty that the forward fills (a drifting cache)."""

    def __init__(self) -> None:
        super().__init__()
        self.sources = {"noise": torch.Generator().manual_seed(3)}
        self.register_buffer("cache", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        noise = torch.randn(x.shape, generator=self.sources["noise"], dtype=x.dtype)
        self.cache = noise if self.cache is None else self.cache + noise
        h = torch.tanh(self.trunk(x)) + 0.5 * self.cache
        return self.target(h + self.branch(h))


def test_generators_in_containers_and_buffers_filled_in_forward_start_every_pass_alike():
    net = NoiseInAContainer()
    state = net.sources["noise"].get_state()
    record = gf.compare(net, mse, batches(), branches={"b": "branch"}, targets={"t": "target"}, seed=5)
    assert torch.equal(net.sources["noise"].get_state(), state) and net.cache is None

    def before(index):
        net.sources["noise"].manual_seed(pass_seed(5, index))
        net.cache = None

    expected = reference_retention(net, mse, batches(), net.branch, net.target, before)
    assert rel_err(record.retention("b", "t"), expected) < TOL


class ExpandedBuffer(Residual):
    """A buffer made by expand() (several elements share memory): it cannot be copied into, nor written."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("scale", torch.full((1, 1), 0.5, dtype=torch.float64).expand(4, 6), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x * self.scale)


def test_an_expanded_buffer_does_not_stop_the_measurement():
    net = ExpandedBuffer()
    record = gf.compare(net, mse, batches(), branches={"b": "branch"}, targets={"t": "target"})
    assert rel_err(record.retention("b", "t"), reference_retention(net, mse, batches(), net.branch, net.target)) < TOL
