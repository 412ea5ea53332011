"""Passes and retention: run the subject with and without each branch and compare gradient norms.

One *pass* is one forward + backward of the subject on one batch under one ablation *setting*. Every
setting of one batch runs from the same RNG seed on the same weights, so dropout masks match. Gradients
come from ``torch.autograd.grad`` on the targets' parameters only: the user's ``.grad`` fields, modes,
hooks and RNG state are left exactly as they were.
"""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from .ablation import ablate
from .errors import LossError, SubjectError
from .probing import combine_norms
from .record import RunRecord, build_record
from .stats import bootstrap_indices, bootstrap_ratio_ci, ratio_of_means
from .subject import Branch, Subject

ProgressFn = Callable[[int, int], None]
REFERENCE = "with"
N_RESAMPLES = 2000


@dataclass(frozen=True)
class Setting:
    """One ablation setting: ``ablations`` maps branch names to how they are switched off."""

    name: str
    ablations: Mapping[str, Branch] = field(default_factory=dict)
    scale: float | None = None


@dataclass
class TargetLayout:
    """The trainable parameters of all targets, deduplicated, and which belong to which row."""

    params: list[nn.Parameter]
    rows: dict[str, dict[str, list[int]]]  # target -> {"*" | module name: parameter indices}
    describe: dict[str, dict[str, Any]]


def _layout(subject: Subject, target_names: Sequence[str]) -> TargetLayout:
    index_of: dict[int, int] = {}
    params: list[nn.Parameter] = []
    rows: dict[str, dict[str, list[int]]] = {}
    describe: dict[str, dict[str, Any]] = {}

    def indices(named: list[tuple[str, nn.Parameter]]) -> list[int]:
        out = []
        for _, param in named:
            if id(param) not in index_of:
                index_of[id(param)] = len(params)
                params.append(param)
            out.append(index_of[id(param)])
        return out

    for target in target_names:
        named = subject.target_parameters(target)
        target_rows = {"*": indices(named)}
        module_params: dict[str, int] = {}
        for module_name, module in subject.target_modules(target):
            own = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
            if own:
                target_rows[module_name] = indices(own)
                module_params[module_name] = sum(p.numel() for _, p in own)
        rows[target] = target_rows
        describe[target] = {
            **subject.target(target).describe(),
            "n_params": sum(p.numel() for _, p in named),
            "modules": module_params,
        }
    return TargetLayout(params, rows, describe)


def _pass_seed(seed: int, batch_index: int) -> int:
    return int(np.random.SeedSequence([seed, batch_index]).generate_state(1, dtype=np.uint64)[0] >> 1)


def _seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)


def _check_loss(loss: Any) -> torch.Tensor:
    if not isinstance(loss, torch.Tensor):
        raise LossError(
            f"loss_fn returned a {type(loss).__name__}; gradflow needs a scalar torch.Tensor "
            "(e.g. return F.cross_entropy(model(x), y))."
        )
    if loss.numel() != 1:
        raise LossError(
            f"loss_fn returned a tensor of shape {tuple(loss.shape)}; gradflow needs a scalar. "
            "Reduce it inside loss_fn (e.g. .mean() or .sum())."
        )
    if not loss.requires_grad:
        raise LossError(
            "loss_fn returned a tensor that does not require grad: no trainable parameter reaches the "
            "loss (are all parameters frozen, or was it computed under torch.no_grad()?)."
        )
    return loss.reshape(())


def _one_pass(subject: Subject, batch: Any, setting: Setting, layout: TargetLayout) -> tuple[float, list]:
    with ablate(subject.model, dict(setting.ablations)) if setting.ablations else contextlib.nullcontext():
        loss = _check_loss(subject.loss_fn(subject.model, batch))
        grads = torch.autograd.grad(loss, layout.params, allow_unused=True)
    present = [g for g in grads if g is not None]
    norms = torch._foreach_norm(present) if present else []
    values = iter(torch.stack([loss.detach().to(torch.float64), *[n.to(torch.float64) for n in norms]]).tolist())
    loss_value = next(values)
    return loss_value, [None if g is None else next(values) for g in grads]


def _group_norms(layout: TargetLayout, param_norms: list[float | None]) -> dict[str, dict[str, float | None]]:
    return {
        target: {row: combine_norms([param_norms[i] for i in idx]) for row, idx in rows.items()}
        for target, rows in layout.rows.items()
    }


class _SavedRng:
    """Saves and restores every global RNG a loss function may touch (torch CPU/CUDA, random, numpy)."""

    def __enter__(self) -> _SavedRng:
        self._torch = torch.get_rng_state()
        self._cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
        self._python = random.getstate()
        self._numpy = np.random.get_state()
        return self

    def __exit__(self, *exc: object) -> None:
        torch.set_rng_state(self._torch)
        if self._cuda is not None:
            torch.cuda.set_rng_state_all(self._cuda)
        random.setstate(self._python)
        np.random.set_state(self._numpy)


def run_passes(
    subject: Subject,
    settings: Sequence[Setting],
    target_names: Sequence[str],
    n_batches: int,
    seed: int,
    progress: ProgressFn | None = None,
) -> tuple[TargetLayout, list[dict[str, Any]]]:
    """Run every setting on every batch; return the target layout and one entry per pass."""
    layout = _layout(subject, target_names)
    passes: list[dict[str, Any]] = []
    total = n_batches * len(settings)
    with _SavedRng(), torch.enable_grad():
        for batch_index in range(n_batches):
            batch = subject.batch(batch_index)
            pass_seed = _pass_seed(seed, batch_index)
            for setting in settings:
                _seed_everything(pass_seed)
                loss, param_norms = _one_pass(subject, batch, setting, layout)
                passes.append({
                    "batch": batch_index,
                    "setting": setting.name,
                    "loss": loss,
                    "norms": _group_norms(layout, param_norms),
                })
                if progress is not None:
                    progress(len(passes), total)
    return layout, passes


def _status(with_values: list, without_values: list) -> tuple[str, str]:
    if any(v is None for v in with_values) or any(v is None for v in without_values):
        side = "with the branch" if any(v is None for v in with_values) else "with the branch ablated"
        return "no_grad", f"the target received no gradient {side} in at least one batch"
    values = np.array(with_values + without_values, dtype=float)
    if not np.all(np.isfinite(values)):
        return "non_finite", "NaN or Inf gradient norms"
    if float(np.mean(without_values)) == 0.0:
        return "undefined", "the gradient without the branch is exactly zero, so the ratio is undefined"
    if with_values == without_values:
        return "no_effect", "identical norms with and without the branch: it is not on this target's gradient path"
    return "ok", ""


def retention_rows(
    layout: TargetLayout,
    passes: list[dict[str, Any]],
    comparisons: Sequence[tuple[str, str, str, float | None]],
    n_batches: int,
    seed: int,
    confidence: float = 0.95,
) -> list[dict[str, Any]]:
    """One row per (comparison, target, module). ``comparisons`` holds ``(branch, numerator setting,
    denominator setting, scale)``; retention = mean numerator norm / mean denominator norm."""
    by_setting: dict[str, list[dict]] = {}
    for entry in passes:
        by_setting.setdefault(entry["setting"], []).append(entry)
    resample = bootstrap_indices(n_batches, N_RESAMPLES, seed)
    rows = []
    for branch, numerator, denominator, scale in comparisons:
        for target, target_rows in layout.rows.items():
            for module in target_rows:
                with_values = [p["norms"][target][module] for p in by_setting[numerator]]
                without_values = [p["norms"][target][module] for p in by_setting[denominator]]
                status, note = _status(with_values, without_values)
                row: dict[str, Any] = {
                    "branch": branch, "target": target, "module": module, "scale": scale,
                    "norm_with": None, "norm_without": None, "retention": None,
                    "ci_low": None, "ci_high": None, "n_batches": n_batches,
                    "per_batch": [None] * n_batches, "status": status, "note": note,
                }
                if status != "no_grad":
                    num = np.array(with_values, dtype=float)
                    den = np.array(without_values, dtype=float)
                    row["norm_with"] = float(np.mean(num))
                    row["norm_without"] = float(np.mean(den))
                    with np.errstate(divide="ignore", invalid="ignore"):
                        row["per_batch"] = [float(v) for v in num / den]
                    if status in ("ok", "no_effect"):
                        row["retention"] = ratio_of_means(num, den)
                        ci = bootstrap_ratio_ci(num, den, resample, confidence)
                        if ci is not None:
                            row["ci_low"], row["ci_high"] = ci
                rows.append(row)
    return rows


def _resolve_names(requested: str | Sequence[str] | None, available: Mapping[str, Any], kind: str,
                   lookup: Callable[[str], Any]) -> list[str]:
    if requested is None or requested == "all" or requested == ["all"]:
        names = list(available)
    else:
        names = [requested] if isinstance(requested, str) else list(requested)
    if not names:
        raise SubjectError(f"the subject defines no {kind}; add at least one to compare.")
    for name in names:
        lookup(name)
    return names


def _as_subject(
    subject_or_model: Subject | nn.Module,
    loss_fn: Callable | None,
    batches: Any,
    branches: Any,
    targets: Any,
) -> tuple[Subject, int | None, Any, Any]:
    """Normalise both call forms of :func:`compare` to (subject, n_batches, branch names, target names)."""
    if isinstance(subject_or_model, Subject):
        if loss_fn is not None:
            raise SubjectError("pass loss_fn only with a bare model; a Subject already carries its loss.")
        if batches is not None and not isinstance(batches, int):
            raise SubjectError("with a Subject, batches= is the number of batches to use (an int).")
        return subject_or_model, batches, branches, targets
    if loss_fn is None or batches is None:
        raise SubjectError(
            "compare(model, loss_fn, batches, branches=..., targets=...) needs a loss_fn and a list of "
            "batches when called with a bare model (or pass a gradflow.Subject)."
        )
    if not isinstance(branches, Mapping) or not isinstance(targets, Mapping):
        raise SubjectError(
            "with a bare model, branches= and targets= must map names to selectors, e.g. "
            "branches={'cross_attn': 'blocks.*.cross_attn'}, targets={'adapter': 'blocks.*.adapter'}."
        )
    subject = Subject(model=subject_or_model, loss_fn=loss_fn, batches=batches, branches=branches, targets=targets)
    return subject, None, None, None


def _batch_count(subject: Subject, requested: int | None) -> int:
    available = subject.available_batches()
    if requested is None:
        requested = subject.default_batches
    if requested is None:
        if available is None:
            raise SubjectError("the batch source has no length; say how many batches to use (batches=N).")
        requested = available
    if requested < 1:
        raise SubjectError(f"batches must be at least 1, got {requested}.")
    if available is not None and requested > available:
        raise SubjectError(
            f"asked for {requested} batches but the subject has {available}; use batches<={available}."
        )
    return requested


def compare(
    subject_or_model: Subject | nn.Module,
    loss_fn: Callable[[nn.Module, Any], torch.Tensor] | None = None,
    batches: Any = None,
    *,
    branches: Any = None,
    targets: Any = None,
    seed: int = 0,
    confidence: float = 0.95,
    progress: ProgressFn | None = None,
) -> RunRecord:
    """Measure how much gradient each target keeps when each branch is active vs. ablated.

    Two call forms: ``compare(subject, batches=N, seed=S, branches=[names], targets=[names])`` (names
    default to all the subject defines), or ``compare(model, loss_fn, batch_list, branches={name:
    selector}, targets={name: selector})``. Returns the :class:`RunRecord`.
    """
    started = time.perf_counter()
    subject, n_requested, branch_request, target_request = _as_subject(
        subject_or_model, loss_fn, batches, branches, targets
    )
    branch_names = _resolve_names(branch_request or subject.default_branches, subject.branches, "branches",
                                  subject.branch)
    target_names = _resolve_names(target_request or subject.default_targets, subject.targets, "targets",
                                  subject.target)
    n_batches = _batch_count(subject, n_requested)
    branch_modules = {name: [m for m, _ in subject.branch_modules(name)] for name in branch_names}
    settings = [Setting(REFERENCE)] + [
        Setting(f"without:{name}", {name: subject.branch(name)}) for name in branch_names
    ]
    layout, passes = run_passes(subject, settings, target_names, n_batches, seed, progress)
    comparisons = [(name, REFERENCE, f"without:{name}", None) for name in branch_names]
    rows = retention_rows(layout, passes, comparisons, n_batches, seed, confidence)
    return build_record(
        kind="compare", subject=subject, seed=seed, n_batches=n_batches, confidence=confidence,
        branches={n: {**subject.branch(n).describe(), "modules": branch_modules[n]} for n in branch_names},
        targets=layout.describe, settings=settings, passes=passes, rows=rows,
        batch_seeds=[_pass_seed(seed, i) for i in range(n_batches)],
        elapsed_s=time.perf_counter() - started,
    )


def sweep(
    subject: Subject,
    branch: str,
    scales: Sequence[float],
    *,
    batches: int | None = None,
    targets: Any = None,
    seed: int = 0,
    confidence: float = 0.95,
    progress: ProgressFn | None = None,
) -> RunRecord:
    """Retention as a function of branch scale: norm with the branch output × s over norm with it zeroed."""
    started = time.perf_counter()
    if not scales:
        raise SubjectError("sweep needs at least one scale, e.g. scales=[0, 0.1, 0.5, 1].")
    selector = subject.branch(branch).selector
    target_names = _resolve_names(targets or subject.default_targets, subject.targets, "targets", subject.target)
    n_batches = _batch_count(subject, batches)
    reference = Setting(f"without:{branch}", {branch: Branch(selector, "zero")})
    scaled = [Setting(f"scale={float(s):g}:{branch}", {branch: Branch(selector, "scale", float(s))}, float(s))
              for s in scales]
    layout, passes = run_passes(subject, [reference, *scaled], target_names, n_batches, seed, progress)
    comparisons = [(branch, s.name, reference.name, s.scale) for s in scaled]
    rows = retention_rows(layout, passes, comparisons, n_batches, seed, confidence)
    return build_record(
        kind="sweep", subject=subject, seed=seed, n_batches=n_batches, confidence=confidence,
        branches={branch: {**subject.branch(branch).describe(),
                           "modules": [m for m, _ in subject.branch_modules(branch)]}},
        targets=layout.describe, settings=[reference, *scaled], passes=passes, rows=rows,
        batch_seeds=[_pass_seed(seed, i) for i in range(n_batches)],
        elapsed_s=time.perf_counter() - started,
    )
