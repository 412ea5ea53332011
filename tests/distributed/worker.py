"""Run under ``torchrun --nproc_per_node 2``: gradflow on DDP / FSDP2 / a plain model, results to OUT/rank<r>.json.

Each rank takes its half of every global batch (rows ``2r, 2r+1`` of 4). tests/test_distributed.py checks the
results against a single process on the union of the ranks' data.
"""

from __future__ import annotations

import json
import os
import sys
import warnings
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from reference_models import SPARSE_IDS, SparseEmbeddingNet, make_batches, make_net, mse, sparse_loss  # noqa: E402

import gradflow as gf  # noqa: E402

BRANCHES = {"cross": "blocks.*.cross.inner"}
TARGETS = {"adapter": "blocks.*.adapter", "head": "out"}


def local_batches(rank: int, n: int = 3) -> list:
    return [(x[2 * rank:2 * rank + 2], y[2 * rank:2 * rank + 2]) for x, y in make_batches(n)]


def wrap(mode: str, net: torch.nn.Module) -> torch.nn.Module:
    if mode == "ddp":
        return torch.nn.parallel.DistributedDataParallel(net)
    if mode == "fsdp2":
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh("cpu", (dist.get_world_size(),))
        for block in net.blocks:
            fully_shard(block, mesh=mesh)
        fully_shard(net, mesh=mesh)
    return net


def error_of(call, error: type[Exception]) -> str | None:
    """The message of ``error`` raised by ``call()``, None when it returns."""
    try:
        call()
    except error as exc:
        return str(exc)
    return None


def main() -> None:
    mode, out = sys.argv[1], Path(sys.argv[2])
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    result: dict = {"rank": rank}
    if mode == "fsdp1":
        from torch.distributed.fsdp import FullyShardedDataParallel

        try:
            model = FullyShardedDataParallel(make_net(), device_id=torch.device("cpu"))
            gf.compare(model, mse, local_batches(rank), branches=BRANCHES, targets=TARGETS)
            result["error"] = None
        except gf.SubjectError as exc:
            result["error"] = str(exc)
        (out / f"rank{rank}.json").write_text(json.dumps(result))
        dist.barrier()
        os._exit(0)
    if mode == "ddp_sparse":  # an nn.Embedding(sparse=True) target: DDP all-reduces sparse gradients
        model = torch.nn.parallel.DistributedDataParallel(SparseEmbeddingNet())
        ids = SPARSE_IDS[4 * rank:4 * rank + 4]
        record = gf.compare(model, sparse_loss, [ids], branches={"b": "b"}, targets={"emb": "emb"})
        result["compare"] = record.data
        with gf.probe(model, "emb") as probe:
            sparse_loss(model, ids).backward()
        result["probe_accumulated"] = probe.accumulated_norms()
        model.zero_grad(set_to_none=True)
        with gf.probe(model, "emb") as probe:
            sparse_loss(model.module, ids).backward()  # around DDP: .grad is local
        result["bypass_error"] = error_of(probe.accumulated_norms, gf.ProbeError)
        result["bypass_local"] = probe.accumulated_norms(local=True)
        (out / f"rank{rank}.json").write_text(json.dumps(result, default=str))
        dist.barrier()
        os._exit(0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = wrap(mode, make_net())
        batches = local_batches(rank)
        record = gf.compare(model, mse, batches, branches=BRANCHES, targets=TARGETS, seed=4)
        result["compare"] = record.data
        record.save(out / f"saved-by-rank{rank}.json")  # global record: only rank 0 writes
        sub = gf.Subject(model, mse, batches, branches=BRANCHES, targets=TARGETS)
        result["sweep"] = gf.sweep(sub, "cross", [0.5, 1.0], seed=4).data
    result["warnings"] = [str(w.message) for w in caught if issubclass(w.category, gf.runtime.LocalNumbersWarning)]

    with gf.probe(model, "blocks.*.body") as probe:
        mse(model, batches[0]).backward()
    result["probe_accumulated"] = probe.accumulated_norms()
    result["probe_outputs"] = probe.output_norms()
    result["probe_norms_error"] = error_of(probe.norms, gf.ProbeError)
    result["probe_norms_local"] = probe.norms(local=True)

    if mode == "ddp":
        result["wrapper_call_error"] = error_of(
            lambda: gf.compare(model, lambda _m, b: mse(model, b), batches, branches=BRANCHES, targets=TARGETS),
            gf.SubjectError)
    (out / f"rank{rank}.json").write_text(json.dumps(result, default=str))
    dist.barrier()  # every result is on disk
    # Leave without tearing gloo down: with FSDP2's extra process groups, torch 2.14's teardown aborts now and
    # then ("terminate called without an active exception") after all the work is done.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
