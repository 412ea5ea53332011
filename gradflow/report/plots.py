"""Plots for the HTML report: matplotlib figures rendered to inline SVG strings.

No pyplot and no global backend switch: figures are ``matplotlib.figure.Figure`` objects saved with the
SVG backend (Agg-free, headless). Text stays text (``svg.fonttype = 'none'``, system sans-serif, no font
URLs); matplotlib escapes it as XML, and :func:`figure_svg` removes the XML prolog, the DOCTYPE (which
names a URL), metadata and comments (matplotlib copies label text into comments unescaped).
"""

from __future__ import annotations

import functools
import io
import math
import re
from collections.abc import Callable
from typing import Any, TypeVar

from ..record import RunRecord
from ..verdicts import Band
from .format import visible
from .sweep import sweep_curves

T = TypeVar("T")

#: At most this many modules get a bar in the norm chart (the lowest-retention ones, in layer order).
MAX_BAR_MODULES = 40
#: Figure width in inches.
WIDTH = 9.5
#: Above this many modules the profile shades the CI instead of drawing error bars.
MAX_ERRORBARS = 80
#: At most this many module names are written as tick labels of the retention profile.
MAX_TICK_LABELS = 40

_COLORS = ["#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860", "#da8bc3", "#8c8c8c"]
_STRIP = [
    (re.compile(r"<\?xml[^>]*\?>\s*"), ""),
    (re.compile(r"<!DOCTYPE[^>]*>\s*", re.S), ""),
    (re.compile(r"<metadata>.*?</metadata>\s*", re.S), ""),
    (re.compile(r"<!--.*?-->\s*", re.S), ""),
]
_RC = {"svg.fonttype": "none", "svg.hashsalt": "gradflow", "font.size": 9, "font.family": "sans-serif",
       "axes.spines.top": False, "axes.spines.right": False}


def label(text: Any) -> str:
    """Text for a matplotlib label: literal, never mathtext ('$' escaped), control characters shown."""
    return visible(text).replace("$", r"\$")


def figure_svg(fig: Any) -> str:
    """The figure as an ``<svg>`` element string fit for inline HTML."""
    import matplotlib

    buffer = io.StringIO()
    with matplotlib.rc_context(_RC):
        fig.savefig(buffer, format="svg", metadata={"Date": None})
    svg = buffer.getvalue()
    for pattern, repl in _STRIP:
        svg = pattern.sub(repl, svg)
    return svg.strip()


def _styled(func: Callable[..., T]) -> Callable[..., T]:
    """Run a plot function under gradflow's rc settings (artists read them when they are created)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        import matplotlib

        with matplotlib.rc_context(_RC):
            return func(*args, **kwargs)

    return wrapper


def _figure(width: float, height: float, left_labels: list[str] | None = None,
            bottom_labels: list[str] | None = None, rotated: bool = False) -> Any:
    """A figure with margins sized for its tick labels (one draw: cheaper than bbox_inches='tight')."""
    from matplotlib.figure import Figure

    char_in = 0.075  # width of one 9 pt character, in inches (approximate)
    left = 0.55 + char_in * max((len(t) for t in left_labels or []), default=0)
    bottom = 0.5
    if bottom_labels:
        longest = max(len(t) for t in bottom_labels)
        if rotated:  # 45° labels hang down and to the left of their ticks: grow the figure, not shrink the plot
            drop = char_in * longest * 0.72
            bottom += drop + 0.1
            height += drop
            left = max(left, drop + 0.1)
        else:
            bottom += 0.15
    left = min(left, width * 0.55)
    fig = Figure(figsize=(width, height), dpi=72)
    fig.subplots_adjust(left=left / width, right=1 - 0.2 / width, bottom=bottom / height, top=1 - 0.5 / height)
    return fig


def _axes(fig: Any) -> Any:
    return fig.add_subplot(1, 1, 1)


def _shade_band(ax: Any, band: Band, horizontal: bool = True) -> None:
    low = band.min_retention if band.min_retention is not None else 0.0
    high = band.max_retention
    top = high if high is not None else max(low * 10, 10.0)
    span = ax.axhspan if horizontal else ax.axvspan
    line = ax.axhline if horizontal else ax.axvline
    span(low, top, color="#55a868", alpha=0.08, zorder=0, label=label(f"band {band.describe()}"))
    for bound in (band.min_retention, band.max_retention):
        if bound is not None:
            line(bound, color="#55a868", lw=1, ls="--", zorder=1)


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def _yerr(rows: list[dict[str, Any]]) -> list[list[float]]:
    low, high = [], []
    for row in rows:
        ok = _finite(row["retention"]) and _finite(row["ci_low"]) and _finite(row["ci_high"])
        low.append(max(0.0, row["retention"] - row["ci_low"]) if ok else 0.0)
        high.append(max(0.0, row["ci_high"] - row["retention"]) if ok else 0.0)
    return [low, high]


def _keep_y_range(ax: Any, values: list[float], band: Band) -> None:
    finite = [v for v in values if _finite(v)]
    bounds = [b for b in (band.min_retention, band.max_retention) if b is not None]
    top = max([*finite, *bounds, 1.0]) * 1.1
    ax.set_ylim(0, min(top, 5.0) if finite else 1.2)


def _reference_rows(record: RunRecord) -> list[dict[str, Any]]:
    """The module rows a compare record shows; for a sweep, those at its largest scale."""
    if record.kind != "sweep":
        return [r for r in record.rows if r["module"] != "*"]
    scales = [r["scale"] for r in record.rows if r["scale"] is not None]
    top = max(scales) if scales else None
    return [r for r in record.rows if r["module"] != "*" and r["scale"] == top]


def _targets(rows: list[dict[str, Any]]) -> list[str]:
    return list(dict.fromkeys(r["target"] for r in rows))


@_styled
def norm_charts(record: RunRecord) -> list[dict[str, Any]]:
    """Per target: gradient norm of each module with the branch vs without each branch (grouped bars).

    More than :data:`MAX_BAR_MODULES` modules: only the lowest-retention ones are drawn (noted)."""
    rows = _reference_rows(record)
    sweep = record.kind == "sweep"
    charts = []
    for target in _targets(rows):
        target_rows = [r for r in rows if r["target"] == target]
        modules = list(dict.fromkeys(r["module"] for r in target_rows))
        note = ""
        if len(modules) > MAX_BAR_MODULES:
            worst = {}
            for r in target_rows:
                value = r["retention"] if _finite(r["retention"]) else math.inf
                worst[r["module"]] = min(worst.get(r["module"], math.inf), value)
            keep = set(sorted(modules, key=lambda m: worst[m])[:MAX_BAR_MODULES])
            note = (f"showing the {MAX_BAR_MODULES} of {len(modules)} modules with the lowest retention, "
                    "in layer order")
            modules = [m for m in modules if m in keep]
        branches = list(dict.fromkeys(r["branch"] for r in target_rows))
        by_key = {(r["branch"], r["module"]): r for r in target_rows}
        series = [("with" if not sweep else f"scale {target_rows[0]['scale']:g}",
                   [by_key.get((branches[0], m), {}).get("norm_with") for m in modules])]
        for b in branches:
            series.append((f"without {b}" if not sweep else f"{b} zeroed",
                           [by_key.get((b, m), {}).get("norm_without") for m in modules]))
        fig = _figure(WIDTH, 1.1 + 0.16 * len(modules) * len(series) + 0.1 * len(modules),
                      left_labels=[label(m) for m in modules])
        ax = _axes(fig)
        height = 0.8 / len(series)
        for i, (name, values) in enumerate(series):
            ys = [j + (i - (len(series) - 1) / 2) * height for j in range(len(modules))]
            xs = [v if _finite(v) else 0.0 for v in values]
            ax.barh(ys, xs, height=height, color=_COLORS[i % len(_COLORS)], label=label(name))
        ax.set_yticks(range(len(modules)), [label(m) for m in modules])
        ax.invert_yaxis()
        ax.set_xlabel("mean gradient norm")
        ax.legend(loc="lower left", bbox_to_anchor=(0, 1.0), ncol=6, frameon=False, fontsize=8)
        charts.append({"title": f"Gradient norms per module: {target}", "svg": figure_svg(fig), "note": note})
    return charts


@_styled
def retention_profiles(record: RunRecord, band: Band) -> list[dict[str, Any]]:
    """Per target: retention of each module row in layer order, with CI error bars, one line per branch
    (per scale for a sweep)."""
    rows = [r for r in record.rows if r["module"] != "*"]
    charts = []
    for target in _targets(rows):
        target_rows = [r for r in rows if r["target"] == target]
        modules = list(dict.fromkeys(r["module"] for r in target_rows))
        series: dict[str, list[dict[str, Any]]] = {}
        for r in target_rows:
            name = r["branch"] if r["scale"] is None else f"{r['branch']} × {r['scale']:g}"
            series.setdefault(name, []).append(r)
        named = len(modules) <= MAX_TICK_LABELS
        fig = _figure(WIDTH, 3.4 if len(modules) <= MAX_TICK_LABELS // 2 else 4.2,
                      bottom_labels=[label(m) for m in modules] if named else ["x"], rotated=named)
        ax = _axes(fig)
        _shade_band(ax, band)
        index = {m: i for i, m in enumerate(modules)}
        for i, (name, srows) in enumerate(series.items()):
            xs = [index[r["module"]] for r in srows]
            ys = [r["retention"] if _finite(r["retention"]) else math.nan for r in srows]
            color = _COLORS[i % len(_COLORS)]
            if len(modules) <= MAX_ERRORBARS:
                ax.errorbar(xs, ys, yerr=_yerr(srows), fmt="o-", ms=4, lw=1, capsize=2, color=color,
                            label=label(name))
            else:  # hundreds of modules: one shaded CI polygon instead of hundreds of error bars
                low, high = _yerr(srows)
                ax.plot(xs, ys, "-", lw=1, color=color, label=label(name))
                ax.fill_between(xs, [y - d for y, d in zip(ys, low, strict=True)],
                                [y + d for y, d in zip(ys, high, strict=True)], color=color, alpha=0.2, lw=0,
                                label=label(f"{name} CI"))
        if named:
            ax.set_xticks(range(len(modules)), [label(m) for m in modules], rotation=45, ha="right")
        else:
            ax.set_xlabel(f"module index (0 … {len(modules) - 1}, layer order; names in the table)")
        ax.set_ylabel("retention")
        _keep_y_range(ax, [r["retention"] for r in target_rows], band)
        ax.legend(loc="lower left", bbox_to_anchor=(0, 1.0), ncol=6, frameon=False, fontsize=8)
        charts.append({"title": f"Retention profile: {target}", "svg": figure_svg(fig), "note": ""})
    return charts


@_styled
def batch_scatter(record: RunRecord, band: Band) -> dict[str, Any]:
    """Per-batch retention of each whole-target row (dots), its ratio of means (bar) and CI (error bar)."""
    rows = [r for r in record.rows if r["module"] == "*"]
    names = [label(f"{r['branch']} → {r['target']}" + ("" if r["scale"] is None else f" × {r['scale']:g}"))
             for r in rows]
    tilt = len(rows) > 3
    fig = _figure(WIDTH, 3.4, bottom_labels=names, rotated=tilt)
    ax = _axes(fig)
    _shade_band(ax, band)
    values = []
    for i, row in enumerate(rows):
        per_batch = [v for v in row.get("per_batch", []) if _finite(v)]
        n = max(len(per_batch), 1)
        xs = [i + 0.25 * ((j + 0.5) / n - 0.5) for j in range(len(per_batch))]
        ax.scatter(xs, per_batch, s=12, color="#8c8c8c", alpha=0.8, zorder=2,
                   label="per batch" if i == 0 else None)
        values += per_batch
        if _finite(row["retention"]):
            values.append(row["retention"])
            ax.errorbar([i], [row["retention"]], yerr=_yerr([row]), fmt="D", ms=6, color="#4c72b0", capsize=4,
                        zorder=3, label="ratio of means, CI" if i == 0 else None)
    ax.set_xticks(range(len(rows)), names, rotation=30 if tilt else 0, ha="right" if tilt else "center")
    ax.set_xlim(-0.6, len(rows) - 0.4)
    ax.set_ylabel("retention")
    _keep_y_range(ax, values, band)
    ax.legend(loc="lower left", bbox_to_anchor=(0, 1.0), ncol=6, frameon=False, fontsize=8)
    return {"title": "Per-batch retention", "svg": figure_svg(fig), "note": ""}


@_styled
def sweep_chart(record: RunRecord, band: Band, suggestion: dict[str, Any] | None) -> dict[str, Any]:
    """Retention of each whole target as a function of the branch scale, with CIs and the suggestion."""
    fig = _figure(WIDTH, 3.6, bottom_labels=["1"])
    ax = _axes(fig)
    _shade_band(ax, band)
    values = []
    for i, ((branch, target), rows) in enumerate(sweep_curves(record).items()):
        ys = [r["retention"] if _finite(r["retention"]) else math.nan for r in rows]
        values += ys
        ax.errorbar([r["scale"] for r in rows], ys, yerr=_yerr(rows), fmt="o-", capsize=3, lw=1.5,
                    color=_COLORS[i % len(_COLORS)], label=label(f"{target} ({branch})"))
    if suggestion is not None and suggestion.get("scale") is not None:
        ax.axvline(suggestion["scale"], color="#c44e52", ls=":", lw=1.5,
                   label=label(f"suggested scale {suggestion['scale']:g}"))
    ax.set_xlabel("branch scale")
    ax.set_ylabel("retention")
    _keep_y_range(ax, values, band)
    ax.legend(loc="lower left", bbox_to_anchor=(0, 1.0), ncol=6, frameon=False, fontsize=8)
    return {"title": "Sweep: retention vs scale", "svg": figure_svg(fig), "note": ""}


@_styled
def learning_charts(record: RunRecord) -> list[dict[str, Any]]:
    """A learn record's curves: held-out and training loss per step, and each target's gradient norm per step,
    one line per run (with the branch, without it, at each scale)."""
    learning = record.data["learning"]
    runs = learning["runs"]
    charts = []
    fig = _figure(WIDTH, 3.6, bottom_labels=["1"])
    ax = _axes(fig)
    for i, (name, run) in enumerate(runs.items()):
        color = _COLORS[i % len(_COLORS)]
        steps = list(range(1, len(run["train_loss"]) + 1))
        ax.plot(steps, [v if _finite(v) else math.nan for v in run["train_loss"]], "-", lw=0.8, alpha=0.35,
                color=color)
        ax.plot(run["eval_steps"], [v if _finite(v) else math.nan for v in run["eval_loss"]], "o-", ms=3, lw=1.6,
                color=color, label=label(f"{name} (held-out)"))
    ax.set_xlabel("training step")
    ax.set_ylabel("loss")
    ax.legend(loc="lower left", bbox_to_anchor=(0, 1.0), ncol=4, frameon=False, fontsize=8)
    charts.append({"title": "Loss: held-out (dots) and training (faint) per run", "svg": figure_svg(fig), "note": ""})
    targets = list(dict.fromkeys(t for run in runs.values() for t in run["target_norms"]))
    for target in targets:
        fig = _figure(WIDTH, 3.0, bottom_labels=["1"])
        ax = _axes(fig)
        for i, (name, run) in enumerate(runs.items()):
            values = run["target_norms"].get(target, [])
            ax.plot(range(1, len(values) + 1), [v if _finite(v) else math.nan for v in values], "-", lw=1.2,
                    color=_COLORS[i % len(_COLORS)], label=label(name))
        ax.set_xlabel("training step")
        ax.set_ylabel("gradient norm")
        ax.legend(loc="lower left", bbox_to_anchor=(0, 1.0), ncol=4, frameon=False, fontsize=8)
        charts.append({"title": f"Gradient norm of {target} per step", "svg": figure_svg(fig), "note": ""})
    return charts


@_styled
def all_plots(record: RunRecord, band: Band, suggestion: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Every plot of the HTML report, in page order: ``[{"title", "svg", "note"}]``."""
    if record.kind == "learn":
        return learning_charts(record)
    plots = []
    if record.kind == "sweep":
        plots.append(sweep_chart(record, band, suggestion))
    plots += norm_charts(record)
    plots += retention_profiles(record, band)
    plots.append(batch_scatter(record, band))
    return plots
