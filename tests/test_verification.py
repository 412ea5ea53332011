"""Never silently wrong: every way a hook can miss, a gradient can hide or a number can be local is either
measured right (checked against plain torch) or refused with the cause and the fix."""

from __future__ import annotations

import math

import pytest
import torch
from reference_models import (
    SPARSE_IDS,
    SparseEmbeddingNet,
    Switchable,
    make_batches,
    make_net,
    mse,
    norm_of,
    rel_err,
    sparse_loss,
)
from torch import nn
from torch.utils.checkpoint import checkpoint

import gradflow as gf
from gradflow.norms import PIECE, piece_norms, to_floats, vector_norms

TOL = 1e-6



# ------------------------------------------------------------------------------------ ablation that ran
class Bypass(nn.Module):
    """Its forward is never called: the parent calls ``inner`` directly (as wrappers sometimes do)."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = nn.Linear(6, 6)

    def forward(self, x):
        return self.inner(x)


class BypassNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.cross = Bypass()
        self.unused = nn.Linear(6, 6)
        self.adapter = nn.Linear(6, 6)
        self.out = nn.Linear(6, 1)

    def forward(self, x):
        x = x + self.cross.inner(x)
        return self.out(x + self.adapter(x))


def test_branch_module_that_never_runs_is_an_error_naming_what_ran():
    net = BypassNet().double()
    with pytest.raises(gf.AblationError, match=r"'cross' \(Bypass\) never ran.*cross\.inner"):
        gf.compare(net, mse, make_batches(1), branches={"cross": "cross"}, targets={"adapter": "adapter"})


def test_unused_branch_module_is_an_error_not_no_effect():
    net = BypassNet().double()
    with pytest.raises(gf.AblationError, match="'unused'.*never ran"):
        gf.compare(net, mse, make_batches(1), branches={"unused": "unused"}, targets={"adapter": "adapter"})


def test_container_branch_resolves_to_the_modules_that_run_and_says_so():
    class LoraLike(nn.Module):
        def __init__(self):
            super().__init__()
            self.base = nn.Linear(6, 6)
            self.lora_B = nn.ModuleDict({"default": nn.Linear(6, 6, bias=False)})

        def forward(self, x):
            return self.base(x) + self.lora_B["default"](x)

    torch.manual_seed(0)
    net = nn.Sequential(LoraLike(), nn.Tanh(), nn.Linear(6, 1)).double()
    batches = make_batches(2)
    record = gf.compare(net, mse, batches, branches={"lora": "**.lora_B"}, targets={"head": "2"})
    assert record.data["branches"]["lora"]["modules"] == ["0.lora_B.default"]
    assert any("ModuleDict" in note for note in record.data["measurement"]["notes"])
    seeds = record.data["batches"]["pass_seeds"]
    head = list(net[2].parameters())
    with_ = [norm_of(torch.autograd.grad(mse(net, b), head)) for b in batches]
    lora = net[0].lora_B["default"]
    saved = lora.weight.data.clone()
    lora.weight.data.zero_()  # the model without its LoRA contribution
    without = [norm_of(torch.autograd.grad(mse(net, b), head)) for b in batches]
    lora.weight.data.copy_(saved)
    del seeds
    assert rel_err(record.retention("lora", "head"), (sum(with_) / 2) / (sum(without) / 2)) < TOL


def test_target_whose_modules_never_run_is_not_run():
    net = BypassNet().double()
    record = gf.compare(net, mse, make_batches(2), branches={"cross": "cross.inner"},
                        targets={"unused": "unused", "adapter": "adapter"})
    unused = next(r for r in record.rows if r["target"] == "unused" and r["module"] == "*")
    assert unused["status"] == "not_run" and unused["retention"] is None
    assert "never ran" in unused["note"]
    adapter = next(r for r in record.rows if r["target"] == "adapter" and r["module"] == "*")
    assert adapter["status"] == "ok"


def test_public_ablate_verifies_on_exit():
    net = BypassNet().double()
    with pytest.raises(gf.AblationError), gf.ablate(net, gf.Branch("unused")):
        mse(net, make_batches(1)[0])


# ------------------------------------------------------------------------------- hidden gradients
class ReentrantNet(nn.Module):
    """Blocks under reentrant checkpointing: their parameters are not in the outer autograd graph."""

    def __init__(self, use_reentrant: bool) -> None:
        super().__init__()
        self.first = nn.Linear(6, 6)
        self.block = Switchable(nn.Linear(6, 6))
        self.adapter = nn.Linear(6, 6)
        self.out = nn.Linear(6, 1)
        self.use_reentrant = use_reentrant

    def _inner(self, x):
        x = self.block(x)
        return x + self.adapter(torch.tanh(x))

    def forward(self, x):
        x = torch.tanh(self.first(x))
        return self.out(checkpoint(self._inner, x, use_reentrant=self.use_reentrant))


def _reference_backward(net, batches, params):
    out = []
    for enabled in (True, False):
        net.block.enabled = enabled
        norms = []
        for batch in batches:
            net.zero_grad(set_to_none=True)
            mse(net, batch).backward()
            norms.append(norm_of([p.grad for p in params]))
        out.append(norms)
    net.block.enabled = True
    net.zero_grad(set_to_none=True)
    return out


@pytest.mark.parametrize("use_reentrant", [True, False])
def test_checkpointed_targets_match_backward(use_reentrant):
    torch.manual_seed(0)
    net = ReentrantNet(use_reentrant).double()
    batches = make_batches(3)
    record = gf.compare(net, mse, batches, branches={"cross": "block.inner"},
                        targets={"adapter": "adapter", "first": "first"})
    for target, module in (("adapter", net.adapter), ("first", net.first)):
        with_, without = _reference_backward(net, batches, list(module.parameters()))
        assert rel_err(record.norms(target)["with"], sum(with_) / 3) < TOL
        assert rel_err(record.retention("cross", target), sum(with_) / sum(without)) < TOL
    assert list(record.data["measurement"]["gradient_paths"]) == (["backward"] if use_reentrant else ["autograd"])


def test_backward_path_leaves_grads_and_post_accumulate_hooks_untouched():
    torch.manual_seed(0)
    net = ReentrantNet(True).double()
    batches = make_batches(2)
    mse(net, batches[0]).backward()  # the user's own accumulated gradient
    before = {n: p.grad.clone() for n, p in net.named_parameters()}
    objects = {n: p.grad for n, p in net.named_parameters()}
    steps = []
    for p in net.parameters():  # optimizer-in-backward style hooks must not fire for gradflow's passes
        p.register_post_accumulate_grad_hook(lambda t: steps.append(1))
    gf.compare(net, mse, batches, branches={"cross": "block.inner"}, targets={"adapter": "adapter"})
    assert steps == []
    for name, param in net.named_parameters():
        assert param.grad is objects[name] and torch.equal(param.grad, before[name])
    mse(net, batches[0]).backward()
    assert steps  # the user's hooks are still there


class ScaleInside(torch.autograd.Function):
    """A custom Function that runs a module inside its own backward (like hand-rolled checkpointing)."""

    @staticmethod
    def forward(ctx, x, module):
        ctx.module = module
        ctx.save_for_backward(x)
        with torch.no_grad():
            return module(x)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        with torch.enable_grad():
            x = x.detach().requires_grad_()
            out = ctx.module(x)
        torch.autograd.backward(out, grad)
        return x.grad, None


def test_custom_function_hiding_parameters_uses_the_backward_path():
    torch.manual_seed(0)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.first = nn.Linear(6, 6)
            self.hidden = nn.Linear(6, 6)
            self.cross = Switchable(nn.Linear(6, 6))
            self.out = nn.Linear(6, 1)

        def forward(self, x):
            x = self.cross(torch.tanh(self.first(x)))
            return self.out(ScaleInside.apply(x, self.hidden))

    net = Net().double()
    batches = make_batches(2)
    record = gf.compare(net, mse, batches, branches={"cross": "cross.inner"}, targets={"hidden": "hidden"})
    assert "backward" in record.data["measurement"]["gradient_paths"]
    norms = []
    for enabled in (True, False):
        net.cross.enabled = enabled
        values = []
        for batch in batches:
            net.zero_grad(set_to_none=True)
            mse(net, batch).backward()
            values.append(norm_of([p.grad for p in net.hidden.parameters()]))
        norms.append(sum(values))
    assert rel_err(record.retention("cross", "hidden"), norms[0] / norms[1]) < TOL


# ---------------------------------------------------------------------------------------- compile
def test_compiled_model_is_measured_eagerly_and_matches_reference():
    net = make_net()
    batches = make_batches(2)
    compiled = torch.compile(net, backend="aot_eager")
    mse(compiled, batches[0]).backward()  # compiled first: dynamo would now skip hooks added later
    net.zero_grad(set_to_none=True)
    record = gf.compare(compiled, mse, batches, branches={"cross": "blocks.*.cross.inner"},
                        targets={"adapter": "blocks.*.adapter"})
    eager = gf.compare(net, mse, batches, branches={"cross": "blocks.*.cross.inner"},
                       targets={"adapter": "blocks.*.adapter"})
    assert record.rows[0]["status"] == "ok"
    assert record.retention("cross", "adapter") == eager.retention("cross", "adapter")
    assert record.data["measurement"]["runtime"]["compiled_modules"] == [""]


def test_loss_that_closes_over_the_compiled_model_still_runs_eagerly():
    net = make_net()
    batches = make_batches(2)
    compiled = torch.compile(net, backend="aot_eager")
    mse(compiled, batches[0])

    def loss_fn(_model, batch):  # ignores its argument and calls the compiled wrapper
        return mse(compiled, batch)

    record = gf.compare(net, loss_fn, batches, branches={"cross": "blocks.*.cross.inner"},
                        targets={"adapter": "blocks.*.adapter"})
    eager = gf.compare(net, mse, batches, branches={"cross": "blocks.*.cross.inner"},
                       targets={"adapter": "blocks.*.adapter"})
    assert record.retention("cross", "adapter") == eager.retention("cross", "adapter")


# ------------------------------------------------------------------------------------------ probe
def test_probe_accumulation_reports_each_backward_and_the_accumulated_grad():
    net = make_net()
    batches = make_batches(3)
    params = list(net.blocks[0].adapter.parameters())
    expected = [norm_of(torch.autograd.grad(mse(net, b), params)) for b in batches]
    accumulated = [torch.zeros_like(p) for p in params]
    for b in batches:
        for acc, g in zip(accumulated, torch.autograd.grad(mse(net, b), params), strict=True):
            acc += g
    with gf.probe(net, "blocks.0.adapter") as p:
        for b in batches:
            mse(net, b).backward()
    per_backward = [n["blocks.0.adapter"] for n in p.backward_norms()]
    assert p.n_backward == 3
    for got, want in zip(per_backward, expected, strict=True):
        assert rel_err(got, want) < TOL
    assert rel_err(p.norms()["blocks.0.adapter"], expected[-1]) < TOL
    assert rel_err(p.accumulated_norms()["blocks.0.adapter"], norm_of(accumulated)) < TOL
    net.zero_grad(set_to_none=True)
    assert p.accumulated_norms()["blocks.0.adapter"] is not None  # read at exit, not after zero_grad


def test_a_probe_open_for_a_whole_run_reads_only_the_last_backward(monkeypatch):
    # norms() once per step of a long run must not re-read every earlier backward (quadratic in steps)
    import gradflow.probing as probing

    net = make_net()
    batch = make_batches(1)[0]
    unpacked = []
    original = probing._unpack
    monkeypatch.setattr(probing, "_unpack", lambda packed: unpacked.append(1) or original(packed))
    with gf.probe(net, "blocks.*.adapter") as p:
        for _ in range(20):
            mse(net, batch).backward()
            unpacked.clear()
            p.norms()
            p.output_norms()
            assert len(unpacked) <= 2
    assert len(p.backward_norms()) == 20


def test_probe_output_norms_refuse_a_forward_run_outside_the_probe():
    net = make_net()
    loss = mse(net, make_batches(1)[0])  # the forward before the probe (the old README example)
    with gf.probe(net, "blocks.*.body") as p:
        loss.backward()
    assert p.norms()["blocks.0.body"] is not None  # parameter hooks see a backward of an earlier forward
    with pytest.raises(gf.ProbeError, match="forward"):
        p.output_norms()
    assert p.output_norms(allow_unobserved=True) == {}


def test_probe_without_any_backward_says_so():
    net = make_net()
    with gf.probe(net, "blocks.*.adapter") as p:
        mse(net, make_batches(1)[0])
    with pytest.raises(gf.ProbeError, match="no backward"):
        p.norms()
    assert p.accumulated_norms()["blocks.0.adapter"] is None


def test_probe_on_compiled_model_observes_outputs():
    net = make_net()
    batch = make_batches(1)[0]
    compiled = torch.compile(net, backend="aot_eager")
    mse(compiled, batch).backward()
    net.zero_grad(set_to_none=True)
    with gf.probe(compiled, "blocks.*.body") as p:
        mse(compiled, batch).backward()
    assert all(v is not None for v in p.output_norms().values())
    assert any("torch.compile" in note for note in p.notes)


def test_probe_accumulated_norm_sees_grads_changed_after_the_backward():
    # The probe reuses a backward's norm of a fresh .grad at exit only while that tensor is unchanged.
    net = make_net()
    batch = make_batches(1)[0]
    params = list(net.blocks[0].adapter.parameters())
    expected = norm_of(torch.autograd.grad(mse(net, batch), params))
    with gf.probe(net, "blocks.0.adapter") as clipped:
        mse(net, batch).backward()
        for param in params:
            param.grad.mul_(0.25)  # in place, as clip_grad_norm_ does
    assert rel_err(clipped.norms()["blocks.0.adapter"], expected) < TOL
    assert rel_err(clipped.accumulated_norms()["blocks.0.adapter"], expected / 4) < TOL
    net.zero_grad(set_to_none=True)
    with gf.probe(net, "blocks.0.adapter") as replaced:
        mse(net, batch).backward()
        for param in params:
            param.grad = param.grad * 3  # a new tensor
    assert rel_err(replaced.accumulated_norms()["blocks.0.adapter"], 3 * expected) < TOL
    net.zero_grad(set_to_none=True)
    with gf.probe(net, "blocks.0.adapter") as unchanged:
        mse(net, batch).backward()
    assert rel_err(unchanged.accumulated_norms()["blocks.0.adapter"], expected) < TOL


def test_one_probe_open_across_training_steps():
    net = make_net()
    batches = make_batches(4)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    params = list(net.blocks[1].adapter.parameters())
    with gf.probe(net, "blocks.*.adapter") as p:
        for batch in batches:
            optimizer.zero_grad(set_to_none=True)
            expected = norm_of(torch.autograd.grad(mse(net, batch), params))
            outputs = mse(net, batch)
            outputs.backward()
            assert rel_err(p.norms()["blocks.1.adapter"], expected) < TOL
            assert rel_err(p.accumulated_norms()["blocks.1.adapter"], expected) < TOL
            assert p.output_norms()["blocks.1.adapter"] is not None
            optimizer.step()
            del outputs
            assert len(p._output_handles) <= 2 * len(net.blocks)  # freed outputs' hook handles are let go
    assert p.n_backward == 2 * len(batches)  # each step: the reference autograd.grad and the backward


def test_probe_records_torch_autograd_grad_passes():
    # autograd.grad never writes .grad: the probe must keep the gradient its hook saw, not read .grad later.
    net = make_net()
    batch = make_batches(1)[0]
    params = list(net.blocks[0].adapter.parameters())
    with gf.probe(net, "blocks.0.adapter") as p:
        grads = torch.autograd.grad(mse(net, batch), params)
    assert rel_err(p.norms()["blocks.0.adapter"], norm_of(grads)) < TOL
    assert p.accumulated_norms()["blocks.0.adapter"] is None  # and .grad stays untouched
    assert all(param.grad is None for param in params)


def test_probe_output_hooks_do_not_confuse_a_freed_tensor_with_a_new_one():
    # Output tensors that nothing keeps alive are freed during the forward; a later output may reuse the id.
    class Chain(nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = nn.ModuleList(nn.Linear(8, 8) for _ in range(6))

        def forward(self, x):
            total = 0
            for layer in self.layers:
                layer(x)  # discarded: tensor and graph freed at once, the next output may reuse its id
                total = total + layer(x).sum()  # sum saves nothing: this output is freed at once too
            return total

    net = Chain()
    x = torch.randn(4, 8)
    with gf.probe(net, "layers.*", params=False) as p:
        net(x).backward()
    for name, value in p.output_norms().items():
        assert rel_err(value, math.sqrt(32)) < TOL, name  # d(total)/d(output) is all ones (4 x 8)


# ------------------------------------------------------------------------------------------ norms
def test_norms_are_float64_exact_on_a_million_elements():
    generator = torch.Generator().manual_seed(0)
    grad = torch.randn(1_000_000, generator=generator) * 3e-3
    exact = math.sqrt(math.fsum(v * v for v in grad.double().tolist()))
    (got,) = to_floats(vector_norms([grad]))
    assert rel_err(got, exact) < 1e-12


@pytest.mark.parametrize("numel", [0, 1, 100, 4095, 4096, 4097, 30_000, 1_000_000])
def test_fast_norms_are_within_2e7_of_float64(numel):
    generator = torch.Generator().manual_seed(numel)
    tensors = [torch.randn(numel, generator=generator) * torch.rand(numel, generator=generator) * 5,
               torch.randn(numel, 3, generator=generator).t()]  # non-contiguous
    for got, tensor in zip(to_floats(vector_norms(tensors, exact=False)), tensors, strict=True):
        exact = math.sqrt(math.fsum(v * v for v in tensor.double().flatten().tolist()))
        assert abs(got - exact) <= (2e-7 if tensor.numel() >= PIECE else 1e-12) * exact  # small: float64


def _float64_norm(tensor: torch.Tensor) -> float:
    return math.sqrt(math.fsum(v * v for v in tensor.double().flatten().tolist()))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("numel", [0, 7, 4096, 4099, 21_000, 28_693, 199_680])  # 4099 is prime: rows + a tail
def test_piece_norms_have_the_tensors_norm(numel, dtype):
    generator = torch.Generator().manual_seed(numel)
    tensor = (torch.randn(numel, generator=generator) * 4).to(dtype)
    transposed = torch.randn(3, numel, generator=generator).to(dtype).t()  # non-contiguous
    for t in (tensor, transposed):
        pieces = piece_norms(t)
        assert pieces.dim() == 1 and pieces.numel() <= max(1, t.numel() // (PIECE // 8) + 1)
        (got,) = to_floats(vector_norms([pieces]))
        assert abs(got - _float64_norm(t)) <= 2e-7 * _float64_norm(t)


@pytest.mark.parametrize("scale", [1e19, 1e-22, 1e-30, 0.0])
def test_fast_norms_survive_exploding_and_vanishing_values(scale):
    # float32 squares overflow above ~1.8e19 and underflow below ~1e-19: such pieces are summed in float64
    generator = torch.Generator().manual_seed(3)
    tensor = torch.randn(128 * 128 + 5, generator=generator) * scale
    tensor[:4096] *= 1e-3  # pieces of different magnitude in one tensor
    (got,) = to_floats(vector_norms([tensor], exact=False))
    (pieces,) = to_floats(vector_norms([piece_norms(tensor)]))
    exact = _float64_norm(tensor)
    for value in (got, pieces):
        assert value == exact == 0.0 or abs(value - exact) <= 2e-7 * exact
    net = nn.Sequential(nn.Linear(128, 128))
    x = torch.randn(4, 128, generator=generator)
    with gf.probe(net, "0") as p:
        (net(x).sum() * scale).backward()
    expected = _float64_norm(torch.cat([q.grad.flatten() for q in net.parameters()]))
    for value in (p.norms()["0"], p.accumulated_norms()["0"]):
        assert value == expected == 0.0 or abs(value - expected) <= 2e-7 * expected


def test_norms_of_complex_gradients():
    generator = torch.Generator().manual_seed(0)
    tensors = [torch.randn(5000, dtype=torch.complex64, generator=generator),
               torch.randn(7, dtype=torch.complex128, generator=generator)]
    for exact in (True, False):
        for got, tensor in zip(to_floats(vector_norms(tensors, exact=exact)), tensors, strict=True):
            assert rel_err(got, _float64_norm(tensor.abs())) < 1e-6
    net = nn.Sequential(nn.Linear(4, 4), _ToComplex())
    x = torch.randn(3, 4)
    with gf.probe(net, "**") as p:  # module "1" returns a complex tensor: its output gradient is complex
        net(x).abs().sum().backward()
    out = net(x)
    (expected,) = torch.autograd.grad(out.abs().sum(), out)
    assert rel_err(p.output_norms()["1"], _float64_norm(expected.abs())) < 1e-6


def test_sparse_embedding_gradients_are_measured():
    # nn.Embedding(sparse=True): a sparse COO gradient with repeated indices (1 and 2 more than once)
    net, ids = SparseEmbeddingNet(), SPARSE_IDS

    def dense_norm(zero_b: bool) -> float:
        handle = net.b.register_forward_hook(lambda m, i, o: torch.zeros_like(o)) if zero_b else None
        (grad,) = torch.autograd.grad(sparse_loss(net, ids), [net.emb.weight])
        if handle is not None:
            handle.remove()
        return grad.to_dense().norm().item()

    with gf.probe(net, "emb") as p:
        sparse_loss(net, ids).backward()
    assert rel_err(p.norms()["emb"], dense_norm(False)) < TOL
    assert rel_err(p.accumulated_norms()["emb"], dense_norm(False)) < TOL
    record = gf.compare(net, sparse_loss, [ids], branches={"b": "b"}, targets={"emb": "emb"})
    assert rel_err(record.norms("emb")["with"], dense_norm(False)) < TOL
    assert rel_err(record.norms("emb")["without"]["b"], dense_norm(True)) < TOL


class _ToComplex(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.view_as_complex(x.reshape(-1, 2))


def test_probe_float32_output_norms_match_autograd_on_every_piece_path():
    # outputs of 7 x 4099 (rows and a tail), 7 x 3000 (rows that divide it) and 7 x 1 (one float64 piece)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(16, 4099), nn.Tanh(), nn.Linear(4099, 3000), nn.Tanh(), nn.Linear(3000, 1))
    x = torch.randn(7, 16)
    outputs: dict[str, torch.Tensor] = {}
    handles = [module.register_forward_hook(lambda m, i, o, name=name: outputs.__setitem__(name, o))
               for name, module in net.named_children()]
    loss = net(x).square().sum()
    for handle in handles:
        handle.remove()
    names = list(outputs)
    expected = dict(zip(names, torch.autograd.grad(loss, [outputs[n] for n in names]), strict=True))
    with gf.probe(net, ["0", "1", "2", "3", "4"]) as p:
        net(x).square().sum().backward()
    for name, value in p.output_norms().items():
        assert abs(value - _float64_norm(expected[name])) <= 2e-7 * _float64_norm(expected[name]), name


def test_norms_group_mixed_dtypes_and_keep_order():
    tensors = [torch.ones(4, dtype=torch.float32), torch.full((9,), 2.0, dtype=torch.bfloat16),
               torch.ones(16, dtype=torch.float64), torch.full((1,), 3.0, dtype=torch.float16)]
    norms = vector_norms(tensors)
    assert all(n.dtype == torch.float64 for n in norms)
    assert to_floats(norms) == [2.0, 6.0, 4.0, 3.0]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device: splits a model across CPU and GPU")
def test_model_split_across_cpu_and_gpu():
    torch.manual_seed(0)
    first, second = nn.Linear(6, 6).double(), nn.Linear(6, 1).double().cuda()
    branch = Switchable(nn.Linear(6, 6)).double()

    class Split(nn.Module):
        def __init__(self):
            super().__init__()
            self.first, self.branch, self.second = first, branch, second

        def forward(self, x):
            return self.second(self.branch(torch.tanh(self.first(x))).cuda())

    net = Split()
    batches = [(x, y.cuda()) for x, y in make_batches(2)]
    record = gf.compare(net, mse, batches, branches={"b": "branch.inner"},
                        targets={"both": ["first", "second"]})
    params = [*first.parameters(), *second.parameters()]
    with_ = [norm_of([g.cpu() for g in torch.autograd.grad(mse(net, b), params)]) for b in batches]
    branch.enabled = False
    without = [norm_of([g.cpu() for g in torch.autograd.grad(mse(net, b), params)]) for b in batches]
    assert rel_err(record.retention("b", "both"), sum(with_) / sum(without)) < TOL
    with gf.probe(net, ["first", "second"]) as p:
        mse(net, batches[0]).backward()
    assert set(p.norms()) == {"first", "second"}


# --------------------------------------------------------------------------------------- sweep
def test_sweep_warns_when_the_model_renormalises_the_branch():
    class NormMatched(nn.Module):
        def __init__(self):
            super().__init__()
            self.cross = nn.Linear(6, 6)
            self.adapter = nn.Linear(6, 6)
            self.out = nn.Linear(6, 1)

        def forward(self, x):
            delta = self.cross(x)
            delta = delta * (x.norm(dim=-1, keepdim=True) / (delta.norm(dim=-1, keepdim=True) + 1e-6))
            x = x + 0.1 * delta  # the hooked module's scale cancels in the norm matching
            return self.out(x + self.adapter(x))

    torch.manual_seed(0)
    net = NormMatched().double()
    sub = gf.Subject(net, mse, make_batches(2), branches={"cross": "cross"}, targets={"adapter": "adapter"})
    record = gf.sweep(sub, "cross", [0.1, 0.5, 1.0])
    assert any("renormalises" in w for w in record.data["measurement"]["warnings"])
    plain = gf.sweep(gf.Subject(make_net(), mse, make_batches(2), branches={"cross": "blocks.*.cross.inner"},
                                targets={"adapter": "blocks.*.adapter"}), "cross", [0.1, 0.5, 1.0])
    assert plain.data["measurement"]["warnings"] == []
