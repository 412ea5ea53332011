"""Deterministic run records for the report tests (imported as ``golden.records``).

Records come from ``gf.compare`` / ``gf.sweep`` on the hand-made float64 models of
``reference_models``; the fields that vary between machines or runs (``run``, ``environment``) are
replaced by fixed values, and some rows are edited to exercise every verdict and hostile module names.
"""

from __future__ import annotations

import copy
import math
from typing import Any

from reference_models import make_batches, make_net, mse

import gradflow as gf

FIXED_RUN = {"created": "2025-01-02T03:04:05+00:00", "elapsed_s": 1.5}
FIXED_ENV = {"gradflow": "0.1.0", "python": "3.11.0", "platform": "linux-x86_64", "torch": "2.x", "numpy": "2.x",
             "cuda": None, "deterministic_algorithms": False}
HOSTILE = "blocks.1.adapter|[red]x_y*`z`"
XSS = "<script>alert(1)</script>"


def fixed(record: gf.RunRecord) -> gf.RunRecord:
    """A copy with the run-specific fields fixed (for goldens)."""
    data = copy.deepcopy(record.data)
    data["run"] = dict(FIXED_RUN)
    data["environment"] = dict(FIXED_ENV)
    return gf.RunRecord(data)


def subject(depth: int = 3) -> gf.Subject:
    return gf.Subject(make_net(depth=depth), mse, make_batches(4), name="toy", preset="unit",
                      branches={"cross": "blocks.*.cross.inner"},
                      targets={"adapter": "blocks.*.adapter", "tied": ["head", "tail"]}, config={"depth": depth})


def compare_record() -> gf.RunRecord:
    """A compare record with a module renamed to a hostile name and one row made starved."""
    data = fixed(gf.compare(subject(), batches=4, seed=0)).data
    for row in data["retention"]:
        if row["module"] == "blocks.1.adapter":
            row["module"] = HOSTILE
    for entry in data["passes"]:  # the record stays self-consistent: passes and targets use the name too
        entry["norms"]["adapter"][HOSTILE] = entry["norms"]["adapter"].pop("blocks.1.adapter")
    modules = data["targets"]["adapter"]["modules"]
    modules[HOSTILE] = modules.pop("blocks.1.adapter")
    return gf.RunRecord(data)


def sweep_record() -> gf.RunRecord:
    return fixed(gf.sweep(subject(), "cross", [0, 0.1, 0.5, 1], batches=3, seed=0))


def set_row(record: gf.RunRecord, module: str, retention: float | None, half_width: float | None = 0.02,
            target: str | None = None, scale: float | None = None) -> None:
    """Set one row's retention (and a symmetric CI of ``half_width``; None = no CI) in place."""
    for row in record.rows:
        if row["module"] == module and (target is None or row["target"] == target) and (
                scale is None or row["scale"] == scale):
            row["retention"] = retention
            row["status"] = "ok" if retention is not None else "no_grad"
            if retention is None or half_width is None:
                row["ci_low"] = row["ci_high"] = None
            else:
                row["ci_low"], row["ci_high"] = retention - half_width, retention + half_width
            return
    raise KeyError(module)


def copy_record(record: gf.RunRecord) -> gf.RunRecord:
    return gf.RunRecord(copy.deepcopy(record.data))


def regression_pair() -> tuple[gf.RunRecord, gf.RunRecord]:
    """Baseline (the bug: 0.375) and new (the fix: 0.961) with one row of each regression verdict."""
    old = compare_record()
    new = copy_record(old)
    set_row(old, "*", 0.3748, 0.03, target="adapter")
    set_row(new, "*", 0.9609, 0.02, target="adapter")        # improved (fixed)
    set_row(old, "blocks.0.adapter", 0.95, 0.02)
    set_row(new, "blocks.0.adapter", 0.60, 0.05)             # regressed (broken)
    set_row(old, HOSTILE, 1.02, 0.05)
    set_row(new, HOSTILE, 1.01, 0.05)                        # unchanged (CIs overlap)
    set_row(old, "blocks.2.adapter", 0.30, 0.02)
    set_row(new, "blocks.2.adapter", 0.55, 0.02)             # improved (toward the band)
    new.data["retention"] = [r for r in new.rows if r["target"] != "tied" or r["module"] != "tail"]  # removed
    extra = copy.deepcopy(new.rows[-1])
    extra["module"] = "extra.adapter"
    new.data["retention"].append(extra)                      # added
    new.data["subject"]["config"] = {"depth": 3, "cross_scale": 0.1}
    return old, new


def synthetic_record(n_modules: int, seed: int = 0) -> gf.RunRecord:
    """A compare record with ``n_modules`` module rows in one target (numbers from a fixed formula)."""
    base = compare_record()
    data = copy.deepcopy(base.data)
    rows: list[dict[str, Any]] = []
    names = [f"encoder.layers.{i}.adapter" for i in range(n_modules)]
    for i, module in enumerate(["*", *names]):
        value = 0.55 + 0.5 * (0.5 + 0.5 * math.sin(i * 0.37 + seed))
        norm_without = 1.0 + (i % 7) * 0.1
        rows.append({
            "branch": "cross", "target": "adapter", "module": module, "scale": None,
            "numerator": "with", "denominator": "without:cross",
            "norm_with": value * norm_without, "norm_without": norm_without, "retention": value,
            "ci_low": value - 0.03, "ci_high": value + 0.03, "n_batches": 4,
            "per_batch": [value - 0.02, value + 0.01, value, value + 0.02], "status": "ok", "note": "",
        })
    data["retention"] = rows
    data["targets"] = {"adapter": {"selector": "encoder.layers.*.adapter", "n_params": 72 * n_modules,
                                   "modules": {m: 72 for m in names}}}
    return gf.RunRecord(data)
