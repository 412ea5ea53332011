"""Time the renderers on a 500-module run record: terminal, markdown, JSON summary and HTML.

    python benchmarks/bench_render.py [--modules 500] [--repeat 3]

The record is synthetic (numbers from a fixed formula; the renderers only read records). The first
HTML render pays matplotlib's one-time font and import setup; it is reported separately.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import time

from rich.console import Console

from gradflow.record import SCHEMA, SCHEMA_VERSION, RunRecord
from gradflow.verdicts import Band


def synthetic_record(n_modules: int, n_batches: int = 8) -> RunRecord:
    names = [f"encoder.layers.{i}.adapter" for i in range(n_modules)]
    rows = []
    for branch in ("cross_attn",):
        for i, module in enumerate(["*", *names]):
            value = 0.55 + 0.5 * (0.5 + 0.5 * math.sin(i * 0.37))
            without = 1.0 + (i % 7) * 0.1
            rows.append({
                "branch": branch, "target": "adapter", "module": module, "scale": None,
                "norm_with": value * without, "norm_without": without, "retention": value,
                "ci_low": value - 0.03, "ci_high": value + 0.03, "n_batches": n_batches,
                "per_batch": [value + 0.01 * math.sin(j) for j in range(n_batches)], "status": "ok", "note": "",
            })
    data = {
        "schema": SCHEMA, "schema_version": SCHEMA_VERSION, "kind": "compare",
        "run": {"created": "2025-01-01T00:00:00+00:00", "elapsed_s": 0.0}, "environment": {"gradflow": "bench"},
        "subject": {"name": "bench", "preset": None, "config": {}, "model": {}},
        "seed": 0, "confidence": 0.95, "batches": {"count": n_batches, "pass_seeds": list(range(n_batches))},
        "branches": {"cross_attn": {"selector": "encoder.layers.*.cross", "mode": "zero", "modules": []}},
        "targets": {"adapter": {"selector": "encoder.layers.*.adapter", "n_params": 0, "modules": {}}},
        "settings": [], "passes": [], "retention": rows,
    }
    return RunRecord(data)


def best_of(repeat: int, func) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        func()
        times.append(time.perf_counter() - started)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modules", type=int, default=500)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    from gradflow.report.html import render_html
    from gradflow.report.markdown import record_markdown
    from gradflow.report.plots import all_plots
    from gradflow.report.summary import report_data
    from gradflow.report.terminal import render_record

    record, band = synthetic_record(args.modules), Band(0.8)

    def terminal() -> None:
        Console(width=140, file=io.StringIO(), color_system=None).print(render_record(record, band))

    started = time.perf_counter()
    page = render_html(record, band)
    first_html = time.perf_counter() - started
    results = {
        "terminal": best_of(args.repeat, terminal),
        "markdown": best_of(args.repeat, lambda: record_markdown(record, band)),
        "json": best_of(args.repeat, lambda: json.dumps(report_data(record, band))),
        "html (first, cold matplotlib)": first_html,
        "html": best_of(args.repeat, lambda: render_html(record, band)),
        "html plots only": best_of(args.repeat, lambda: all_plots(record, band)),
    }
    print(f"{args.modules} modules, {len(record.rows)} rows; best of {args.repeat}; HTML {len(page) / 1e3:.0f} kB")
    for name, seconds in results.items():
        print(f"  {name:<30} {seconds * 1000:8.1f} ms")


if __name__ == "__main__":
    main()
