"""DDP and FSDP2 (torchrun, 2 ranks, gloo on CPU): every rank reports the global numbers, equal to a single
process on the union of the ranks' data; the record is written once; local numbers are never passed off as
global."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from reference_models import SPARSE_IDS, SparseEmbeddingNet, make_batches, make_net, mse, norm_of, rel_err, sparse_loss

WORKER = Path(__file__).parent / "distributed" / "worker.py"
TOL = 1e-9  # float64 models: the all-reduced numbers equal the single-process ones to rounding

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed not available")


def run_ranks(mode: str, tmp_path: Path, ranks: int = 2) -> list[dict]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(ranks),
               str(WORKER), mode, str(tmp_path)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=180, env=env)
    assert done.returncode == 0, done.stderr[-4000:]
    return [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(ranks)]



def union_reference(target_modules: str, seed_batches=3):
    """Single process, whole batches: per-batch norms with and without the branch."""
    net = make_net()
    params = [p for name, p in net.named_parameters() if name.startswith(target_modules)] \
        if target_modules == "out" else [p for b in net.blocks for p in b.adapter.parameters()]
    batches = make_batches(seed_batches)
    with_ = [norm_of(torch.autograd.grad(mse(net, b), params)) for b in batches]
    net.set_cross(False)
    without = [norm_of(torch.autograd.grad(mse(net, b), params)) for b in batches]
    return with_, without


def union_probe():
    """Parameter and output gradient norms of every block body on the first whole batch (plain autograd)."""
    net = make_net()
    batch = make_batches(3)[0]
    zeros = [torch.zeros(4, 6, dtype=torch.float64, requires_grad=True) for _ in net.blocks]
    for block, zero in zip(net.blocks, zeros, strict=True):
        block.output_probe = zero  # d loss / d (body output), before the in-place ReLU
    bodies = [p for b in net.blocks for p in b.body.parameters()]
    grads = torch.autograd.grad(mse(net, batch), zeros + bodies)
    out_norms = {f"blocks.{i}.body": grads[i].norm().item() for i in range(3)}
    param_norms = {f"blocks.{i}.body": norm_of(grads[3 + 2 * i: 5 + 2 * i]) for i in range(3)}
    return param_norms, out_norms


@pytest.mark.parametrize("mode", ["ddp", "fsdp2"])
def test_global_numbers_equal_single_process_on_the_union(mode, tmp_path):
    ranks = run_ranks(mode, tmp_path)
    assert ranks[0]["compare"]["retention"] == ranks[1]["compare"]["retention"]  # identical on every rank
    runtime = ranks[0]["compare"]["measurement"]["runtime"]
    assert runtime["scope"] == mode and runtime["world_size"] == 2
    for target, prefix in (("adapter", "blocks"), ("head", "out")):
        with_, without = union_reference(prefix)
        row = next(r for r in ranks[0]["compare"]["retention"] if r["target"] == target and r["module"] == "*")
        assert rel_err(row["norm_with"], sum(with_) / 3) < TOL
        assert rel_err(row["norm_without"], sum(without) / 3) < TOL
        assert rel_err(row["retention"], sum(with_) / sum(without)) < TOL
    sweep_rows = [r for r in ranks[0]["sweep"]["retention"] if r["module"] == "*" and r["target"] == "adapter"]
    assert sweep_rows == [r for r in ranks[1]["sweep"]["retention"] if r["module"] == "*" and r["target"] == "adapter"]
    saved = json.loads((tmp_path / "saved-by-rank0.json").read_text())
    assert saved["measurement"]["runtime"]["world_size"] == 2
    assert not (tmp_path / "saved-by-rank1.json").exists()
    assert ranks[0]["warnings"] == []
    params, outputs = union_probe()
    for rank in ranks:
        for name, value in params.items():
            assert rel_err(rank["probe_accumulated"][name], value) < TOL
        for name, value in outputs.items():
            assert rel_err(rank["probe_outputs"][name], value) < TOL
        assert "local" in rank["probe_norms_error"]
    if mode == "ddp":
        assert "wrapper" in ranks[0]["wrapper_call_error"]


def test_ddp_sparse_embedding_gradients_equal_single_process(tmp_path):
    ranks = run_ranks("ddp_sparse", tmp_path)
    net = SparseEmbeddingNet()
    (grad,) = torch.autograd.grad(sparse_loss(net, SPARSE_IDS), [net.emb.weight])  # the mean over both ranks
    handle = net.b.register_forward_hook(lambda m, i, o: torch.zeros_like(o))
    (without,) = torch.autograd.grad(sparse_loss(net, SPARSE_IDS), [net.emb.weight])
    handle.remove()
    for rank in ranks:
        row = next(r for r in rank["compare"]["retention"] if r["target"] == "emb" and r["module"] == "*")
        assert rel_err(row["norm_with"], grad.to_dense().norm().item()) < TOL
        assert rel_err(row["norm_without"], without.to_dense().norm().item()) < TOL
        assert rel_err(rank["probe_accumulated"]["emb"], grad.to_dense().norm().item()) < TOL
        assert "not the DDP wrapper" in rank["bypass_error"]
        assert rank["bypass_local"]["emb"] > 0


def test_plain_model_under_a_process_group_says_its_numbers_are_local(tmp_path):
    ranks = run_ranks("plain", tmp_path)
    assert ranks[0]["compare"]["measurement"]["runtime"]["scope"] == "local"
    assert ranks[0]["compare"]["retention"] != ranks[1]["compare"]["retention"]
    assert any("local" in note for note in ranks[0]["compare"]["measurement"]["notes"])
    assert ranks[0]["warnings"] and ranks[1]["warnings"]


def test_fsdp1_is_refused_with_the_way_out(tmp_path):
    (rank,) = run_ranks("fsdp1", tmp_path, ranks=1)
    assert "FSDP1" in rank["error"] and "fully_shard" in rank["error"]
