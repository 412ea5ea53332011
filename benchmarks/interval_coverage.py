"""Coverage of gradflow's retention intervals by simulation (the table of docs/intervals.md).

    python -m benchmarks.interval_coverage            # prints the tables (20,000 replications per cell)
    python -m benchmarks.interval_coverage --write    # and rewrites the tables in docs/intervals.md

Per-batch norms are paired lognormal draws: ``log x`` and ``log y`` bivariate normal with the same sigma (a
coefficient of variation CV of each norm) and correlation rho; the true retention is the ratio of the
expected norms. Each cell is the share of replications whose interval covers the truth. The candidates
are gradflow's interval (jackknife SE of the log ratio of means, Student t) and, for comparison, Fieller's
interval with t quantiles, the delta method on the log ratio with t, and the percentile bootstrap that
gradflow 0.1 used. The sequential table runs ``--batches auto``'s schedule against a band [0.8, inf).
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import numpy as np

from gradflow.stats import Schedule, ratio_interval_arrays, t_quantile

NS = (2, 3, 4, 8, 16)
CVS = (0.1, 0.3, 0.5)
RHOS = (0.0, 0.5, 0.95)
TRUTH = 0.7
DOC = Path(__file__).resolve().parent.parent / "docs" / "intervals.md"


def draw(rng: np.random.Generator, reps: int, n: int, cv: float, rho: float, ratio: float = TRUTH
         ) -> tuple[np.ndarray, np.ndarray]:
    """``(x, y)`` of shape ``(reps, n)``: paired lognormal norms with E[x] / E[y] = ``ratio``."""
    sigma = np.sqrt(np.log(1 + cv * cv))
    cov = np.array([[1.0, rho], [rho, 1.0]]) * sigma * sigma
    z = rng.multivariate_normal([0.0, 0.0], cov, size=(reps, n))
    return np.exp(z[..., 0]) * ratio, np.exp(z[..., 1])


def fieller(x: np.ndarray, y: np.ndarray, confidence: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    n = x.shape[-1]
    t = t_quantile(confidence, n - 1)
    mx, my = x.mean(-1), y.mean(-1)
    vxx, vyy = x.var(-1, ddof=1) / n, y.var(-1, ddof=1) / n
    vxy = ((x - mx[..., None]) * (y - my[..., None])).sum(-1) / (n - 1) / n
    a, b, c = my**2 - t * t * vyy, -2 * (mx * my - t * t * vxy), mx**2 - t * t * vxx
    disc = b * b - 4 * a * c
    bounded = (a > 0) & (disc >= 0)
    root = np.sqrt(np.maximum(disc, 0))
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(bounded, (-b - root) / (2 * a), -np.inf), np.where(bounded, (-b + root) / (2 * a), np.inf)


def delta_log(x: np.ndarray, y: np.ndarray, confidence: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    n = x.shape[-1]
    mx, my = x.mean(-1), y.mean(-1)
    se = (x / mx[..., None] - y / my[..., None]).std(-1, ddof=1) / np.sqrt(n)
    half = t_quantile(confidence, n - 1) * se
    return mx / my * np.exp(-half), mx / my * np.exp(half)


def percentile_bootstrap(rng: np.random.Generator, x: np.ndarray, y: np.ndarray, resamples: int = 400
                         ) -> tuple[np.ndarray, np.ndarray]:
    idx = rng.integers(0, x.shape[-1], size=(resamples, x.shape[-1]))
    ratios = x[:, idx].mean(-1) / y[:, idx].mean(-1)
    return np.percentile(ratios, 2.5, axis=1), np.percentile(ratios, 97.5, axis=1)


def covered(low: np.ndarray, high: np.ndarray, truth: float = TRUTH) -> float:
    return float(np.mean((low <= truth) & (truth <= high)))


def coverage_table(reps: int, seed: int = 0, methods: tuple[str, ...] = ("gradflow",)) -> dict:
    """``{(n, cv, rho): {method: coverage}}`` (and ``"width"``: median width of gradflow's interval)."""
    rng = np.random.default_rng(seed)
    table = {}
    for n in NS:
        for cv in CVS:
            for rho in RHOS:
                x, y = draw(rng, reps, n, cv, rho)
                low, high = ratio_interval_arrays(x, y)
                cell = {"gradflow": covered(low, high), "width": float(np.median(high - low))}
                if "fieller" in methods:
                    cell["fieller"] = covered(*fieller(x, y))
                if "delta" in methods:
                    cell["delta"] = covered(*delta_log(x, y))
                if "bootstrap" in methods:
                    m = min(reps, 2000)
                    cell["bootstrap"] = covered(*percentile_bootstrap(rng, x[:m], y[:m]))
                table[(n, cv, rho)] = cell
    return table


def sequential_table(reps: int, seed: int = 0, truths: tuple[float, ...] = (0.37, 0.7, 0.8, 0.85, 0.96),
                     band: float = 0.8, schedule: Schedule | None = None) -> dict:
    """``{(truth, cv, rho): {"coverage", "error", "mean_batches", "decided"}}`` at the stopping time."""
    schedule = schedule or Schedule()
    rng = np.random.default_rng(seed)
    out = {}
    for truth in truths:
        for cv, rho in ((0.1, 0.5), (0.3, 0.5), (0.5, 0.95)):
            x, y = draw(rng, reps, schedule.max_batches, cv, rho, truth)
            stopped = np.zeros(reps, dtype=bool)
            low, high = np.zeros(reps), np.zeros(reps)
            used = np.zeros(reps, dtype=int)
            for n in schedule.looks:
                lo, hi = ratio_interval_arrays(x[:, :n], y[:, :n], schedule.look_confidence)
                decided = (hi < band) | (lo >= band)
                take = ~stopped & (decided | (n == schedule.max_batches))
                low[take], high[take], used[take] = lo[take], hi[take], n
                stopped |= take
            decided = (high < band) | (low >= band)
            wrong = decided & ((high < band) != (truth < band))
            out[(truth, cv, rho)] = {"coverage": covered(low, high, truth), "error": float(wrong.mean()),
                                     "mean_batches": float(used.mean()), "decided": float(decided.mean())}
    return out


def markdown(table: dict, sequential: dict) -> str:
    lines = ["| N | CV | rho | gradflow | Fieller (t) | delta, log (t) | percentile bootstrap "
             "| gradflow median width |", "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for (n, cv, rho), cell in table.items():
        lines.append(f"| {n} | {cv:g} | {rho:g} | {cell['gradflow']:.3f} | {cell.get('fieller', float('nan')):.3f} | "
                     f"{cell.get('delta', float('nan')):.3f} | {cell.get('bootstrap', float('nan')):.3f} | "
                     f"{cell['width']:.3f} |")
    lines += ["", "| true retention | CV | rho | coverage at stop | wrong verdict | mean batches | decided |",
              "|---:|---:|---:|---:|---:|---:|---:|"]
    for (truth, cv, rho), cell in sequential.items():
        lines.append(f"| {truth:g} | {cv:g} | {rho:g} | {cell['coverage']:.3f} | {cell['error']:.3f} | "
                     f"{cell['mean_batches']:.1f} | {cell['decided']:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=20_000)
    parser.add_argument("--write", action="store_true", help="rewrite the tables in docs/intervals.md")
    args = parser.parse_args(argv)
    text = markdown(coverage_table(args.reps, methods=("gradflow", "fieller", "delta", "bootstrap")),
                    sequential_table(min(args.reps, 5000)))
    print(text)
    if args.write:
        doc = DOC.read_text()
        doc = re.sub(r"<!-- tables -->.*<!-- /tables -->", f"<!-- tables -->\n{text}<!-- /tables -->", doc, flags=re.S)
        DOC.write_text(doc)


if __name__ == "__main__":
    main()
