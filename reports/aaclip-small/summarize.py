"""Summarise the stage-2 sweep of versions and cross-attention weights into README.md's table.

    python reports/aaclip-small/summarize.py > reports/aaclip-small/table.md

Reads only the committed run records (nothing is recomputed).
"""

from __future__ import annotations

from pathlib import Path

import gradflow as gf
from gradflow.report.format import fmt_ci, fmt_ratio

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
        cells = [f"{fmt_ratio(row['retention'])} {fmt_ci(row)}" for row in record.rows]
        print(f"| {config['version']} | {config['resolved_image_cross_attn_weight']:g} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
