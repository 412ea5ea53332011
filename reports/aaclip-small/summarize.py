"""Summarise the stage-2 sweep of versions and cross-attention weights into README.md's table.

    python reports/aaclip-small/summarize.py > reports/aaclip-small/table.md

Reads only the committed run records. They were measured with gradflow 0.1, whose percentile-bootstrap
intervals were too narrow (docs/intervals.md); each interval here is recomputed from the per-batch norms the
records hold, with today's interval (gradflow.stats.ratio_interval: jackknife of the log ratio, Student t).
"""

from __future__ import annotations

from pathlib import Path

import gradflow as gf
import numpy as np

from gradflow.report.format import fmt_ci, fmt_ratio
from gradflow.stats import ratio_interval

HERE = Path(__file__).resolve().parent


def main() -> None:
    records = sorted(HERE.glob("stage2-*.json"))
    modules = [r["module"] for r in gf.load_run(records[0]).rows]
    short = [m.replace("image_adapter.", "").replace("layer_adapters", "layer") for m in modules]
    print("| version | weight | " + " | ".join("image_adapter (all)" if m == "*" else m for m in short) + " |")
    print("|---|---:|" + "---:|" * len(modules))
    for path in records:
        record = gf.load_run(path)
        config = record.data["subject"]["config"]
        cells = []
        for row in record.rows:
            x, y = record.samples(row)
            low, high = ratio_interval(np.array(x), np.array(y))
            cells.append(f"{fmt_ratio(row['retention'])} {fmt_ci({'ci_low': low, 'ci_high': high})}")
        print(f"| {config['version']} | {config['resolved_image_cross_attn_weight']:g} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
