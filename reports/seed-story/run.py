"""The seed's story end to end on the AA-CLIP `small` preset, with random-init CLIP and calibrated magnitudes.

    python reports/seed-story/run.py            # about 30 minutes on 2 CPU cores; writes into this folder

1. Base adapters, trained briefly as the fork's workflow does before adding cross-attention: stage 1 (text
   adapter) then stage 2 without cross-attention (image adapter). Saved to base-adapters/ (not committed:
   the script regenerates them deterministically).
2. Stage 2 with the fork's bug (v1, cross-attention added at full scale, weight 1.0) and its fix (v2 at
   0.1), both on the base adapters, both with the text context calibrated to the per-token norm the fork's
   docs quote (about 17): retention (`compare --batches auto`), learning curves (`learn`), `gradflow check`
   on a v1 and a v2 spec, and the regression report v1 -> v2.
3. The mechanism: retention of the image adapter against the branch-to-residual norm ratio, over text
   context norms (v1, weight 1.0).
4. Retention against the learning ratio over 16 settings (weights 0.1-1.0, v1/v2, two seeds; `tiny` preset,
   random init, calibrated), with Spearman's rho.

Every number lands in summary.json; README.md quotes them.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy import stats

import gradflow as gf
from gradflow.subjects.aaclip import make_subject
from gradflow.subjects.aaclip.checkpoints import save_adapters

HERE = Path(__file__).resolve().parent
BASE = HERE / "base-adapters"
PRESET = "small"
CONTEXT_NORM = "17"  # the fork's docs: "unnormalized text context (per-token norm about 17)"
V1 = {"version": "v1", "stage2.image_cross_attn_weight": "1.0", "stage2.text_context_norm": CONTEXT_NORM}
V2 = {"version": "v2", "stage2.image_cross_attn_weight": "0.1", "stage2.text_context_norm": CONTEXT_NORM}
LEARN = {"steps": 40, "lr": 5e-4, "betas": (0.5, 0.999), "eval_batches": 4, "eval_every": 10}


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def train(subject: gf.Subject, steps: int, lr: float) -> list[float]:
    """A plain training loop (Adam, the fork's betas) on the subject's trainable parameters, in place."""
    params = [p for p in subject.model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=lr, betas=(0.5, 0.999))
    losses = []
    for step in range(steps):
        optimizer.zero_grad(set_to_none=True)
        loss = subject.loss_fn(subject.model, subject.batch(10_000 + step))
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def base_adapters() -> dict:
    """Stage 1 then stage 2 without cross-attention, as train.py does before the feedback training."""
    no_branch = {"use_cross_attention": "false"}
    stage1 = make_subject(preset=PRESET, overrides={**no_branch, "stage": "stage1"}, seed=0)
    started = time.perf_counter()
    text_losses = train(stage1, 15, 1e-4)
    stage2 = make_subject(preset=PRESET, overrides={**no_branch, "stage": "stage2"}, seed=0)
    stage2.model.text_adapter.load_state_dict(stage1.model.text_adapter.state_dict())
    image_losses = train(stage2, 30, 5e-4)
    save_adapters(stage2.model, BASE, groups=("text_adapter", "image_adapter"))
    return {"text_loss": [text_losses[0], text_losses[-1]], "image_loss": [image_losses[0], image_losses[-1]],
            "seconds": time.perf_counter() - started, "steps": {"stage1": 15, "stage2": 30}}


def branch_ratio(subject: gf.Subject, batches: int = 2) -> float:
    """Mean per-token ||cross-attention output|| / ||hidden state it is added to||."""
    ratios = []
    hook = subject.model.image_cross_attn.register_forward_hook(
        lambda _m, inputs, out: ratios.append(float((out.norm(dim=-1) / inputs[0].norm(dim=-1)).mean())))
    try:
        with torch.no_grad():
            for index in range(batches):
                subject.loss_fn(subject.model, subject.batch(index))
    finally:
        hook.remove()
    return float(np.mean(ratios))


def row_summary(record: gf.RunRecord) -> dict:
    row = record.row("cross_attn", "image_adapter")
    return {"retention": row["retention"], "ci": [row["ci_low"], row["ci_high"]],
            "batches": record.data["batches"]["count"], "reason": record.data["batches"]["rule"].get("reason")}


def learn_summary(record: gf.RunRecord) -> dict:
    learning = record.data["learning"]
    row = learning["rows"][0]
    runs = {name: {"eval_loss": [run["eval_loss"][0], run["eval_loss"][-1]],
                   "train_loss": [run["train_loss"][0], run["train_loss"][-1]]}
            for name, run in learning["runs"].items()}
    return {"learning_ratio": row["learning_ratio"], "ci": [row["ci_low"], row["ci_high"]], "status": row["status"],
            "note": row["note"], "runs": runs}


def spec(name: str, overrides: dict) -> Path:
    path = HERE / f"{name}.toml"
    sets = ", ".join(f'"{k}" = "{v}"' for k, v in overrides.items())
    weight = float(overrides["stage2.image_cross_attn_weight"])
    path.write_text(
        f'description = "{name}: stage-2 cross-attention must leave the image adapter >= 80% of its gradient"\n'
        'branches = ["image_cross_attn"]\ntargets = ["image_adapter"]\nbatches = "auto"\nseed = 0\n\n'
        f'[subject]\nname = "aaclip"\npreset = "{PRESET}"\nseed = 0\nset = {{ {sets} }}\n'
        'paths = { adapters = "base-adapters" }\n\n[thresholds]\nmin_retention = 0.8\ngate = "ci"\n\n'
        f'[preflight]\nconfig = {{ resolved_image_cross_attn_weight = {weight} }}\n'
        'trained = ["image_adapter"]\nreachable = true\n')
    return path


def gradflow(*args: object) -> tuple[int, str]:
    done = subprocess.run([sys.executable, "-m", "gradflow", *map(str, args)], capture_output=True, text=True,
                          cwd=HERE)
    return done.returncode, done.stdout + done.stderr


def story() -> dict:
    out: dict = {}
    log("base adapters")
    out["base"] = base_adapters()
    for name, overrides in (("stage2-v1", V1), ("stage2-v2", V2)):
        subject = make_subject(preset=PRESET, overrides=overrides, adapters=str(BASE), seed=0)
        log(f"{name}: compare")
        started = time.perf_counter()
        record = gf.compare(subject, batches="auto", branches=["cross_attn"], targets=["image_adapter"])
        record.save(HERE / f"{name}.json")
        entry = {"compare": {**row_summary(record), "seconds": time.perf_counter() - started},
                 "branch_ratio": branch_ratio(subject)}
        log(f"{name}: learn")
        started = time.perf_counter()
        learned = gf.learn(subject, "cross_attn", targets=["image_adapter"], **LEARN)
        learned.save(HERE / f"learn-{name}.json")
        entry["learn"] = {**learn_summary(learned), "seconds": time.perf_counter() - started}
        code, text = gradflow("check", spec(name, overrides), "--quiet")
        entry["check_exit_code"] = code
        entry["check_summary"] = [line for line in text.splitlines() if line.startswith(("PASS", "FAIL", "ERROR"))]
        for kind in ("compare", "learn"):
            source = HERE / (f"{name}.json" if kind == "compare" else f"learn-{name}.json")
            gradflow("report", source, "--html", source.with_suffix(".html"))
        out[name] = entry
    code, markdown = gradflow("report", "stage2-v2.json", "--baseline", "stage2-v1.json", "--markdown")
    (HERE / "regression-v1-v2.md").write_text(markdown)
    gradflow("report", "stage2-v2.json", "--baseline", "stage2-v1.json", "--html", "regression-v1-v2.html")
    return out


def mechanism() -> list[dict]:
    """Retention vs branch-to-residual ratio, v1 at weight 1.0, over text context norms."""
    rows = []
    for norm in ("none", "2", "5", "17", "50", "200"):
        subject = make_subject(preset=PRESET, adapters=str(BASE), seed=0,
                               overrides={"version": "v1", "stage2.image_cross_attn_weight": "1.0",
                                          "stage2.text_context_norm": norm})
        log(f"mechanism: context norm {norm}")
        record = gf.compare(subject, batches="auto", branches=["cross_attn"], targets=["image_adapter"])
        rows.append({"context_norm": norm, "branch_ratio": branch_ratio(subject), **row_summary(record)})
    return rows


def _spearman(points: list[dict]) -> dict:
    """Spearman's rho between retention and learning ratio, with a Fisher-z interval (Bonett-Wright variance)."""
    usable = [p for p in points if p["learning_status"] == "ok" and p["learning_ratio"] is not None]
    rho = float(stats.spearmanr([p["retention"] for p in usable], [p["learning_ratio"] for p in usable])[0])
    n = len(usable)
    z = math.atanh(max(min(rho, 0.999), -0.999))
    half = 1.96 * math.sqrt((1 + rho * rho / 2) / (n - 3)) if n > 3 else math.inf
    return {"rho": rho, "ci": [math.tanh(z - half), math.tanh(z + half)], "n": n}


def study() -> dict:
    """Retention vs learning ratio over 16 settings on the tiny preset (random init, calibrated), with the learning
    measured twice: training everything (the branch's parameters too) and training only the image adapter."""
    out: dict = {"ci_method": "Fisher z with the Bonett-Wright variance (1 + rho^2/2)/(n-3)"}
    for train_mode in ("all", "targets"):
        points = _study_points(train_mode)
        out[train_mode] = {"points": points, "pooled": _spearman(points),
                           "within_seed": {seed: _spearman([p for p in points if p["seed"] == seed])
                                           for seed in (0, 1)}}
    return out


def _study_points(train_mode: str) -> list[dict]:
    points = []
    for seed in (0, 1):
        for version in ("v1", "v2"):
            for weight in ("0.1", "0.3", "0.6", "1.0"):
                overrides = {"version": version, "stage2.image_cross_attn_weight": weight,
                             "stage2.text_context_norm": CONTEXT_NORM}
                subject = make_subject(preset="tiny", overrides=overrides, seed=seed)
                record = gf.compare(subject, batches="auto", branches=["cross_attn"], targets=["image_adapter"])
                learned = gf.learn(subject, "cross_attn", targets=["image_adapter"], steps=40, lr=5e-4,
                                   betas=(0.5, 0.999), eval_batches=6, eval_every=10, seed=seed, train=train_mode)
                lrow = learned.data["learning"]["rows"][0]
                points.append({"seed": seed, "version": version, "weight": float(weight), **row_summary(record),
                               "learning_ratio": lrow["learning_ratio"],
                               "learning_ci": [lrow["ci_low"], lrow["ci_high"]],
                               "learning_status": lrow["status"], "branch_ratio": branch_ratio(subject)})
                log(f"study ({train_mode}): seed {seed} {version} w {weight}: retention {points[-1]['retention']:.3f}, "
                    f"learning ratio {lrow['learning_ratio']}")
    return points


def main() -> None:
    global HERE, BASE, PRESET, LEARN
    if "--quick" in sys.argv:  # a smoke run of the whole script on the tiny preset, into a scratch folder
        import shutil
        import tempfile

        scratch = Path(tempfile.mkdtemp(prefix="seed-story-"))
        shutil.copy(Path(__file__), scratch / "run.py")
        HERE, BASE, PRESET = scratch, scratch / "base-adapters", "tiny"
        LEARN = {**LEARN, "steps": 4, "eval_every": 2}
    started = time.perf_counter()
    summary = {"preset": PRESET, "context_norm": float(CONTEXT_NORM), "labels": "random init, calibrated magnitudes",
               "torch": torch.__version__, "gradflow": gf.__version__}
    previous = HERE / "summary.json"
    if "--study-only" in sys.argv and previous.is_file():  # keep the slow parts, redo the study
        summary = {**json.loads(previous.read_text()), **summary}
    else:
        summary["story"] = story()
        summary["mechanism"] = mechanism()
    summary["study"] = study()
    summary["seconds"] = time.perf_counter() - started
    (HERE / "summary.json").write_text(json.dumps(summary, indent=1, default=str) + "\n")
    log(f"done in {summary['seconds'] / 60:.1f} min")


if __name__ == "__main__":
    main()
