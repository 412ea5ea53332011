"""gradflow benchmarks: cost of probing and comparing, as ratios against plain steps in the same run.

    python -m benchmarks.run            # full suite (< 15 min on 2 cores); rewrites reports/benchmarks.{json,md}
    python -m benchmarks.run --quick    # CI-sized: every benchmark runs once on tiny sizes, nothing is written

All figures are medians of per-round ratios over interleaved rounds (A B A B ...) after 2 warm-ups.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

import gradflow as gf
from benchmarks.timing import child_peak_rss, interleaved, paired_ratios
from benchmarks.training_loop import training_loop_overhead
from benchmarks.workloads import make_steps, plain_pass
from gradflow.files import write_atomic
from gradflow.norms import to_floats, vector_norms
from gradflow.record import environment
from gradflow.subjects.aaclip import make_subject

ROOT = Path(__file__).resolve().parent.parent


WARMUP = 2  # set to 0 by --quick


def probe_overhead(preset: str, rounds: int, memory_steps: int) -> dict:
    """A training step with gradflow / a norm loop / histograms, over the plain step."""
    subject = make_subject(preset=preset)
    batch = subject.batch(0)
    steps = make_steps(subject, batch)
    result = paired_ratios(interleaved(steps, rounds, WARMUP), "plain")
    if memory_steps:
        for variant in steps:
            rss = child_peak_rss(["-m", "benchmarks.memory_child", preset, variant, str(memory_steps)])
            result[variant]["peak_rss_mb"] = rss["peak_rss_mb"]
        for variant in steps:
            result[variant]["rss_ratio"] = result[variant]["peak_rss_mb"] / result["plain"]["peak_rss_mb"]
    return result


def compare_efficiency(preset: str, branches: list[str], n_batches: int, rounds: int) -> dict:
    """Wall time of compare(K branches, N batches) over (1+K)*N plain forward+backward passes."""
    subject = make_subject(preset=preset)
    batches = [subject.batch(i) for i in range(n_batches)]
    passes = [plain_pass(subject, b) for b in batches]

    def floor() -> None:
        for _ in range(1 + len(branches)):
            for run in passes:
                run()

    def run_compare() -> None:
        gf.compare(subject, batches=n_batches, branches=branches, targets=["image_adapter"])

    result = paired_ratios(interleaved({"floor": floor, "compare": run_compare}, rounds, WARMUP), "floor")
    return {"K": len(branches), "N": n_batches, "branches": branches, **result["compare"],
            "floor_median_s": result["floor"]["median_s"]}


def norm_kernels(rounds: int, quick: bool) -> dict:
    """Per-parameter loop vs torch._foreach_norm vs torch.nn.utils.get_total_norm on ViT-B-16 gradients."""
    import open_clip

    model = open_clip.create_model("ViT-B-16" if not quick else "RN50", pretrained=None).visual
    grads = [torch.randn_like(p) for p in model.parameters()]

    def loop() -> None:
        [g.norm().item() for g in grads]

    def foreach() -> None:
        torch.stack(torch._foreach_norm(grads)).tolist()

    def foreach64() -> None:  # float64 accumulation, as gradflow reads norms
        torch.stack(torch._foreach_norm(grads, 2, dtype=torch.float64)).tolist()

    def gradflow_norms() -> None:  # grouped by (device, dtype), float64, read back per device
        to_floats(vector_norms(grads))

    def total() -> None:
        torch.nn.utils.get_total_norm(grads).item()

    variants = {"loop_item": loop, "foreach_norm": foreach, "foreach_norm_f64": foreach64,
                "gradflow_vector_norms": gradflow_norms, "get_total_norm": total}
    result = paired_ratios(interleaved(variants, rounds, WARMUP), "loop_item")
    result["n_tensors"] = len(grads)
    return result


class ManyModules(nn.Module):
    def __init__(self, n: int, width: int = 32) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(width, width) for _ in range(n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = x + 0.01 * layer(x)
        return x


def _probe_ratio(n_modules: int, rounds: int) -> dict:
    torch.manual_seed(0)
    model = ManyModules(n_modules)
    x = torch.randn(64, 32)

    def plain() -> None:
        model.zero_grad(set_to_none=True)
        model(x).square().mean().backward()

    def probed() -> None:
        model.zero_grad(set_to_none=True)
        with gf.probe(model, "layers.*") as p:
            model(x).square().mean().backward()
        p.norms(), p.output_norms()

    return paired_ratios(interleaved({"plain": plain, "probed": probed}, rounds, WARMUP), "plain")["probed"]


def probe_scaling(counts: list[int], rounds: int) -> dict:
    """Probe overhead (params + outputs of every module) as the number of probed modules grows."""
    out = {n: _probe_ratio(n, rounds) for n in counts}
    per_module = np.polyfit(counts, [out[n]["ratio"] for n in counts], 1)[0]
    return {"by_modules": out, "ratio_slope_per_module": float(per_module)}


def scale_runs(preset: str, batch_counts: list[int], batch_sizes: list[int], rounds: int) -> dict:
    """compare --ablate cross_attn cost by number of batches and by batch size, with fitted slopes."""
    import resource

    out: dict = {"preset": preset, "by_batches": {}, "by_batch_size": {}}
    subject = make_subject(preset=preset)
    # One run over the most batches; the clock is read at each batch boundary (2 passes per batch), so
    # the 1-, 2-, ... batch costs come from one measurement instead of one run each.
    boundaries: dict[int, float] = {}
    start = time.perf_counter()

    def on_pass(done: int, _total: int) -> None:
        if done % 2 == 0 and done // 2 in batch_counts:
            boundaries[done // 2] = time.perf_counter() - start

    gf.compare(subject, batches=max(batch_counts), branches=["cross_attn"], targets=["image_adapter"],
               progress=on_pass)
    out["by_batches"] = {n: boundaries[n] for n in batch_counts}
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    for size in batch_sizes:
        sized = make_subject(preset=preset, overrides={"stage2.batch_size": str(size)})
        times = interleaved({"c": lambda s=sized: gf.compare(s, batches=1, branches=["cross_attn"],
                                                              targets=["image_adapter"])}, rounds, min(WARMUP, 1))["c"]
        out["by_batch_size"][size] = float(np.median(times))
    if len(batch_counts) > 1:
        out["seconds_per_batch"] = float(np.polyfit(batch_counts, [out["by_batches"][n] for n in batch_counts], 1)[0])
    if len(batch_sizes) > 1:
        out["seconds_per_sample"] = float(np.polyfit(batch_sizes, [out["by_batch_size"][s] for s in batch_sizes], 1)[0])
    return out


def sequential_decision(preset: str, fixed: int, quick: bool) -> list[dict]:
    """Time to a decided verdict: --batches auto vs a fixed number of batches, same subject, one run each.

    Two AA-CLIP stage-2 configurations: v2 at weight 0.1 (the fork's fix) and v1 at weight 1.0 (the bug's
    code); band [0.8, inf) on the whole image adapter."""
    out = []
    configs = [("v2", "0.1"), ("v1", "1.0")]
    for version, weight in configs[:1] if quick else configs:
        subject = make_subject(preset=preset, overrides={"version": version,
                                                         "stage2.image_cross_attn_weight": weight})
        started = time.perf_counter()
        auto = gf.compare(subject, batches="auto", branches=["cross_attn"], targets=["image_adapter"],
                          max_batches=3 if quick else 24)
        auto_s = time.perf_counter() - started
        started = time.perf_counter()
        fixed_record = gf.compare(subject, batches=2 if quick else fixed, branches=["cross_attn"],
                                  targets=["image_adapter"])
        fixed_s = time.perf_counter() - started
        row_auto, row_fixed = auto.row("cross_attn", "image_adapter"), fixed_record.row("cross_attn", "image_adapter")
        out.append({"preset": preset, "version": version, "weight": float(weight),
                    "auto_batches": auto.data["batches"]["count"],
                    "auto_reason": auto.data["batches"]["rule"]["reason"],
                    "auto_s": auto_s, "auto_retention": row_auto["retention"],
                    "auto_ci": [row_auto["ci_low"], row_auto["ci_high"]],
                    "fixed_batches": fixed_record.data["batches"]["count"], "fixed_s": fixed_s,
                    "fixed_retention": row_fixed["retention"], "fixed_ci": [row_fixed["ci_low"], row_fixed["ci_high"]],
                    "ratio": auto_s / fixed_s})
    return out


def learn_cost(preset: str, steps: int, rounds: int) -> dict:
    """Time of ``learn`` (with/without the branch, eval batches included) over the (1+S)*K plain training steps
    it has to run at least, S = 1 ablated setting; both timed in the same run."""
    subject = make_subject(preset=preset)
    params = [p for p in subject.model.parameters() if p.requires_grad]
    batches = [subject.batch(i) for i in range(steps)]

    def floor() -> None:
        saved = [p.detach().clone() for p in params]
        optimizer = torch.optim.Adam(params, lr=5e-4, betas=(0.5, 0.999))
        for _ in range(2):  # (1 + S) settings
            for batch in batches:
                optimizer.zero_grad(set_to_none=True)
                subject.loss_fn(subject.model, batch).backward()
                optimizer.step()
            with torch.no_grad():
                for p, value in zip(params, saved, strict=True):
                    p.copy_(value)
        subject.model.zero_grad(set_to_none=True)

    def run_learn() -> None:
        gf.learn(subject, "cross_attn", steps=steps, lr=5e-4, betas=(0.5, 0.999), eval_batches=2,
                 eval_every=steps, targets=["image_adapter"])

    result = paired_ratios(interleaved({"floor": floor, "learn": run_learn}, rounds, min(WARMUP, 1)), "floor")
    return {"preset": preset, "steps": steps, "settings": 2, **result["learn"],
            "floor_median_s": result["floor"]["median_s"]}


def markdown(results: dict) -> str:
    env = results["environment"]
    lines = [
        "# gradflow benchmarks",
        "",
        f"Measured {results['created']} on {env['platform']}, {results['cpu_threads']} torch threads, "
        f"torch {env['torch']}; command `{results['command']}`. Ratios are medians of per-round ratios over "
        f"interleaved rounds after 2 warm-ups (lower is better; 1.00 = as fast as the baseline).",
        "",
    ]
    if len(set(results.get("measured_at", {}).values())) > 1:
        lines += ["Sections measured at: " + ", ".join(f"{name} {when}" for name, when in
                                                       results["measured_at"].items()) + ".", ""]
    for preset, res in results["probe_overhead"].items():
        lines += [f"## Probe overhead — AA-CLIP `{preset}`, one training step (fwd + bwd + Adam step)", "",
                  "| variant | median step (s) | time ratio vs plain [min, max] | peak RSS in 3 steps (MB) "
                  "| RSS ratio |",
                  "|---|---:|---:|---:|---:|"]
        for name, row in res.items():
            lines.append(f"| {name} | {row['median_s']:.3f} | {row['ratio']:.3f} [{row['ratio_min']:.2f}, "
                         f"{row['ratio_max']:.2f}] | "
                         f"{row.get('peak_rss_mb', float('nan')):.0f} | {row.get('rss_ratio', float('nan')):.3f} |")
        lines.append("")
    lines += ["## Compare efficiency — time of `compare` over (1+K)·N plain forward+backward passes", "",
              "| preset | K | N | compare (s) | floor (s) | ratio |", "|---|---:|---:|---:|---:|---:|"]
    for row in results["compare_efficiency"]:
        lines.append(f"| {row['preset']} | {row['K']} | {row['N']} | {row['median_s']:.2f} | "
                     f"{row['floor_median_s']:.2f} | {row['ratio']:.3f} |")
    nk = results["norm_kernels"]
    lines += ["", f"## Norm kernels — {nk['n_tensors']} gradient tensors", "",
              "| kernel | median (ms) | ratio vs loop |", "|---|---:|---:|"]
    for name in ("loop_item", "foreach_norm", "foreach_norm_f64", "gradflow_vector_norms", "get_total_norm"):
        lines.append(f"| {name} | {nk[name]['median_s'] * 1000:.2f} | {nk[name]['ratio']:.3f} |")
    if results.get("sequential"):
        lines += ["", "## Time to decision — `--batches auto` vs a fixed number of batches (band [0.8, ∞))", "",
                  "| preset | version | weight | auto: batches (why) | auto (s) | retention, per-look CI "
                  "| fixed: batches | fixed (s) | retention, 95% CI | time ratio auto/fixed |",
                  "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for row in results["sequential"]:
            lines.append(f"| {row['preset']} | {row['version']} | {row['weight']:g} | {row['auto_batches']} "
                         f"({row['auto_reason']}) | {row['auto_s']:.1f} | {row['auto_retention']:.3f} "
                         f"[{row['auto_ci'][0]:.3f}, {row['auto_ci'][1]:.3f}] | {row['fixed_batches']} | "
                         f"{row['fixed_s']:.1f} | {row['fixed_retention']:.3f} [{row['fixed_ci'][0]:.3f}, "
                         f"{row['fixed_ci'][1]:.3f}] | {row['ratio']:.2f} |")
    if results.get("learn_cost"):
        lc = results["learn_cost"]
        lines += ["", "## Cost of `learn` — over the (1+S)·K plain training steps it must run (S = 1, "
                  "K steps)", "", "| preset | K | learn (s) | floor (s) | ratio [min, max] |",
                  "|---|---:|---:|---:|---:|",
                  f"| {lc['preset']} | {lc['steps']} | {lc['median_s']:.2f} | {lc['floor_median_s']:.2f} | "
                  f"{lc['ratio']:.3f} [{lc['ratio_min']:.2f}, {lc['ratio_max']:.2f}] |",
                  "", "The rest is the held-out evaluation (2 batches before and after each run) and the state "
                  "restore."]
    if results.get("training_loop"):
        tl = results["training_loop"]
        lines += ["", f"## In the training loop — {tl['model']} ({tl['modules']} modules), interleaved rounds", "",
                  "| variant | median step (s) | ratio vs plain [min, max] |", "|---|---:|---:|"]
        for name, row in tl.items():
            if isinstance(row, dict):
                lines.append(f"| {name} | {row['median_s']:.3f} | {row['ratio']:.3f} [{row['ratio_min']:.2f}, "
                             f"{row['ratio_max']:.2f}] |")
        lines += ["", "`gradflow_probe_all_modules`: a `with gf.probe(model, \"**\")` block around every step; "
                  "`..._open`: one probe opened for the whole run (no per-step selection and hook setup); "
                  "`floor_read_output_grads_once`: a hook on each distinct module output that reads its gradient "
                  "once (a sum) and keeps nothing — about the least any per-module output-gradient monitor costs."]
    ps = results["probe_scaling"]
    lines += ["", "## Probe overhead vs number of probed modules (params + outputs of every module)", "",
              "| modules | ratio vs plain |", "|---:|---:|"]
    for n, row in ps["by_modules"].items():
        lines.append(f"| {n} | {row['ratio']:.3f} |")
    lines.append(f"\nFitted slope: {ps['ratio_slope_per_module']:.2e} ratio per probed module.")
    for sc in results["scale"]:
        lines += ["", f"## Scale — `compare --ablate cross_attn` on `{sc['preset']}`", "",
                  "| batches | seconds |", "|---:|---:|"]
        lines += [f"| {n} | {t:.1f} |" for n, t in sc["by_batches"].items()]
        if sc["by_batch_size"]:
            lines += ["", "| batch size (1 batch) | seconds |", "|---:|---:|"]
            lines += [f"| {n} | {t:.1f} |" for n, t in sc["by_batch_size"].items()]
        extra = []
        if "seconds_per_batch" in sc:
            extra.append(f"{sc['seconds_per_batch']:.1f} s per extra batch")
        if "seconds_per_sample" in sc:
            extra.append(f"{sc['seconds_per_sample']:.1f} s per extra sample")
        lines.append(f"\nPeak RSS {sc['peak_rss_mb']:.0f} MB; " + ", ".join(extra) + ".")
    return "\n".join(lines) + "\n"


def sections(quick: bool, skip_full: bool) -> dict[str, Callable[[], object]]:
    """Every section of the report, by name, as a function that measures it."""
    rounds = 1 if quick else 7
    presets = ["tiny"] if quick else ["tiny", "small"]

    def compare_rows() -> list[dict]:
        rows = []
        for preset in presets:
            for branches in (["cross_attn"], ["cross_attn", "image_adapter"]):
                n_rounds = 1 if quick else (9 if preset == "tiny" else 3)
                row = compare_efficiency(preset, branches, 1 if quick else 2, n_rounds)
                rows.append({"preset": preset, **row})
        return rows

    def scale() -> list[dict]:
        runs = [scale_runs("tiny" if quick else "small", [1, 2] if quick else [1, 2, 4],
                           [1, 2] if quick else [1, 2, 4], 1 if quick else 3)]
        if not quick and not skip_full:
            runs.append(scale_runs("full", [1, 2], [], 1))  # one 2-batch run, read at both batches
        return runs

    return {
        "probe_overhead": lambda: {p: probe_overhead(p, 1 if quick else (21 if p == "tiny" else 9), 0 if quick else 3)
                                   for p in presets},
        "compare_efficiency": compare_rows,
        "norm_kernels": lambda: norm_kernels(rounds if quick else 9, quick),
        "sequential": lambda: sequential_decision("tiny" if quick else "small", 8, quick),
        "training_loop": lambda: training_loop_overhead(1 if quick else 40, quick),
        "learn_cost": lambda: learn_cost("tiny" if quick else "small", 2 if quick else 10, 1 if quick else 3),
        "probe_scaling": lambda: probe_scaling([10, 50] if quick else [10, 100, 300, 1000], rounds),
        "scale": scale,
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny sizes, 1 round, nothing written")
    parser.add_argument("--skip-full", action="store_true", help="skip the ViT-L (full preset) scale runs")
    parser.add_argument("--only", default="", help="comma-separated sections to re-measure; the others are kept "
                        "from the existing benchmarks.json (each section records when it was measured)")
    parser.add_argument("--out-dir", type=Path, default=ROOT / "reports")
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    quick = args.quick
    global WARMUP
    WARMUP = 0 if quick else 2
    runners = sections(quick, args.skip_full)
    chosen = [name.strip() for name in args.only.split(",") if name.strip()] or list(runners)
    unknown = sorted(set(chosen) - set(runners))
    if unknown:
        parser.error(f"unknown section(s) {', '.join(unknown)}; sections: {', '.join(runners)}")
    existing = args.out_dir / "benchmarks.json"
    results: dict = json.loads(existing.read_text()) if args.only and existing.exists() and not quick else {}
    started = time.perf_counter()
    now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    results.update({
        "created": now,
        "command": " ".join(["python -m benchmarks.run", *(["--quick"] if quick else []),
                             *([f"--only {args.only}"] if args.only else [])]),
        "environment": environment(),
        "cpu_threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
    })
    measured = results.setdefault("measured_at", {})
    for name in chosen:
        results[name] = runners[name]()
        measured[name] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    results["elapsed_s"] = round(time.perf_counter() - started, 1)
    if not quick:
        write_atomic(args.out_dir / "benchmarks.json", json.dumps(results, indent=1) + "\n")
        write_atomic(args.out_dir / "benchmarks.md", markdown(results))
    print(markdown(results))
    return results


if __name__ == "__main__":
    main()
