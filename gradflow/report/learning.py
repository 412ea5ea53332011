"""Rendering of learn records (``gradflow learn``): loss curves with and without the branch, learning ratios."""

from __future__ import annotations

import math
from typing import Any

from rich.console import Group, RenderableType
from rich.table import Table

from ..record import RunRecord
from .format import fmt_ratio, md_escape, text

SPARK = "▁▂▃▄▅▆▇█"


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def sparkline(values: list[float], low: float, high: float) -> str:
    """``values`` as a line of block characters on the shared scale ``[low, high]``."""
    span = high - low or 1.0
    out = []
    for value in values:
        if not _finite(value):
            out.append("×")
            continue
        level = int(round((value - low) / span * (len(SPARK) - 1)))
        out.append(SPARK[min(max(level, 0), len(SPARK) - 1)])
    return "".join(out)


def _loss(value: Any) -> str:
    return f"{value:.4g}" if _finite(value) else "—"


def _interval(row: dict[str, Any]) -> str:
    low, high = row.get("ci_low"), row.get("ci_high")
    if low is None or high is None:
        return "—"
    return f"[{low:.3f}, {high:.3f}]" if math.isfinite(low) and math.isfinite(high) else "unbounded"


def runs_table(record: RunRecord) -> Table:
    """One line per training run: losses first -> last and the held-out curve (shared scale)."""
    learning = record.data["learning"]
    curves = [v for run in learning["runs"].values() for v in run["eval_loss"] if _finite(v)]
    low, high = (min(curves), max(curves)) if curves else (0.0, 1.0)
    subject = record.data["subject"]
    table = Table(title=text(f"gradflow learn — subject {subject['name']}"
                             + (f" ({subject['preset']})" if subject.get("preset") else "")),
                  caption=text(f"{learning['steps']} steps of {learning['optimizer']['name']} at lr "
                               f"{learning['optimizer']['lr']:g}; held-out loss on {learning['eval_batches']} "
                               f"batches every {learning['eval_every']} steps (curve: {_loss(low)} .. {_loss(high)})"))
    for column in ("run", "train loss first -> last", "held-out first -> last", "held-out curve", "status"):
        table.add_column(column)
    for name, run in learning["runs"].items():
        train = run["train_loss"]
        status = run["status"] + (f" at step {run['diverged_at']}" if run["diverged_at"] is not None else "")
        table.add_row(text(name), f"{_loss(train[0] if train else None)} -> {_loss(train[-1] if train else None)}",
                      f"{_loss(run['eval_loss'][0])} -> {_loss(run['eval_loss'][-1])}",
                      sparkline(run["eval_loss"], low, high), text(status))
    return table


def ratio_table(record: RunRecord) -> Table:
    """The learning ratio of each setting against the ablated run."""
    table = Table(title="learning ratio = held-out loss decrease with the branch / without it",
                  caption=text(record.data["learning"]["interval"]))
    for column in ("branch", "scale", "decrease with", "decrease without", "learning ratio", "interval",
                   "status"):
        table.add_column(column, justify="right" if column in ("scale", "decrease with", "decrease without",
                                                               "learning ratio", "interval") else "left")
    for row in record.data["learning"]["rows"]:
        table.add_row(text(row["branch"]), "" if row["scale"] is None else f"{row['scale']:g}",
                      _loss(row["decrease_with"]), _loss(row["decrease_without"]), fmt_ratio(row["learning_ratio"]),
                      _interval(row), text(row["status"] + (f": {row['note']}" if row["note"] else "")))
    return table


def render_learning(record: RunRecord) -> RenderableType:
    """Everything the terminal shows for a learn record."""
    return Group(runs_table(record), text(""), ratio_table(record))


def learning_markdown(record: RunRecord) -> str:
    """A learn record as markdown tables."""
    learning = record.data["learning"]
    lines = [f"### gradflow learn — subject {md_escape(record.data['subject']['name'])}", "",
             f"{learning['steps']} steps of {learning['optimizer']['name']} at lr {learning['optimizer']['lr']:g}; "
             f"held-out loss on {learning['eval_batches']} batches", "",
             "| run | train loss first -> last | held-out first -> last | status |", "|---|---:|---:|---|"]
    for name, run in learning["runs"].items():
        train = run["train_loss"]
        lines.append(f"| {md_escape(name)} | {_loss(train[0] if train else None)} -> "
                     f"{_loss(train[-1] if train else None)} | {_loss(run['eval_loss'][0])} -> "
                     f"{_loss(run['eval_loss'][-1])} | {md_escape(run['status'])} |")
    lines += ["", "| branch | scale | decrease with | decrease without | learning ratio | interval | status |",
              "|---|---:|---:|---:|---:|---:|---|"]
    for row in learning["rows"]:
        scale = "" if row["scale"] is None else f"{row['scale']:g}"
        lines.append(f"| {md_escape(row['branch'])} | {scale} | "
                     f"{_loss(row['decrease_with'])} | {_loss(row['decrease_without'])} | "
                     f"{fmt_ratio(row['learning_ratio'])} | {_interval(row)} | "
                     f"{md_escape(row['status'] + (': ' + row['note'] if row['note'] else ''))} |")
    return "\n".join(lines) + "\n"


def learning_rows_html(record: RunRecord) -> list[dict[str, str]]:
    """The learning-ratio rows as display strings for the HTML template."""
    return [{"branch": row["branch"], "scale": "" if row["scale"] is None else f"{row['scale']:g}",
             "decrease_with": _loss(row["decrease_with"]), "decrease_without": _loss(row["decrease_without"]),
             "ratio": fmt_ratio(row["learning_ratio"]), "interval": _interval(row), "status": row["status"],
             "note": row["note"]} for row in record.data["learning"]["rows"]]
