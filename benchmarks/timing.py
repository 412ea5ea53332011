"""Timing helpers: interleaved rounds, warm-ups, medians of paired ratios, peak RSS in a child process."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping


def interleaved(variants: Mapping[str, Callable[[], object]], rounds: int, warmup: int = 2) -> dict[str, list[float]]:
    """Run every variant once per round, in the same order (A B C A B C ...); return seconds per round."""
    times: dict[str, list[float]] = {name: [] for name in variants}
    for round_index in range(warmup + rounds):
        for name, fn in variants.items():
            start = time.perf_counter()
            fn()
            elapsed = time.perf_counter() - start
            if round_index >= warmup:
                times[name].append(elapsed)
    return times


def paired_ratios(times: Mapping[str, list[float]], baseline: str) -> dict[str, dict[str, float]]:
    """Median of per-round ratios variant/baseline (robust to drift on a noisy machine), plus medians."""
    base = times[baseline]
    out = {}
    for name, values in times.items():
        ratios = [v / b for v, b in zip(values, base, strict=True)]
        out[name] = {
            "median_s": statistics.median(values),
            "ratio": statistics.median(ratios),
            "ratio_min": min(ratios),
            "ratio_max": max(ratios),
            "rounds": len(values),
        }
    return out


def child_peak_rss(module_args: list[str]) -> dict:
    """Run ``python -m benchmarks.<...>`` style child and parse the JSON it prints last (incl. peak RSS)."""
    proc = subprocess.run([sys.executable, *module_args], capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])
