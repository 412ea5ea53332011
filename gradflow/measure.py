"""Passes and retention: run the subject with and without each branch and compare gradient norms.

One *pass* is one forward + backward of the subject on one batch under one ablation *setting*. Every
setting of one batch runs from the same RNG seed on the same weights, so dropout masks match. Gradients
come from ``torch.autograd.grad`` on the targets' parameters only, or, where autograd cannot reach them
(reentrant checkpointing, FSDP2), from a ``.backward()`` whose ``.grad`` writes are undone
(:mod:`gradflow.gradients`). The user's ``.grad`` fields, modes, hooks and RNG state are left exactly as
they were.

Nothing is taken on trust: every ablated module must have run in its pass (:class:`gradflow.ablation.
Ablation`), compiled code runs eagerly so that hooks fire, and under DDP/FSDP2 the numbers are global
(:mod:`gradflow.distributed`).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, overload

import numpy as np
import torch
from torch import nn

from .ablation import Ablation, ForwardCalls, branch_modules
from .distributed import reduce_pass
from .errors import LossError, SubjectError
from .gradients import GradientPath, choose_path, gradients
from .norms import combine_norms
from .record import RunRecord, build_record
from .runtime import Runtime, inspect_model
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
    modules: dict[str, dict[str, list[str]]]  # target -> {"*" | module name: names of modules (and descendants)}


def _with_descendants(name: str, module: nn.Module) -> list[str]:
    return [name] + [f"{name}.{child}" if name else child for child, _ in module.named_modules() if child]


def _layout(subject: Subject, target_names: Sequence[str]) -> TargetLayout:
    index_of: dict[int, int] = {}
    params: list[nn.Parameter] = []
    rows: dict[str, dict[str, list[int]]] = {}
    describe: dict[str, dict[str, Any]] = {}
    modules: dict[str, dict[str, list[str]]] = {}

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
        target_modules: dict[str, list[str]] = {"*": []}
        module_params: dict[str, int] = {}
        for module_name, module in subject.target_modules(target):
            own = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
            members = _with_descendants(module_name, module)
            target_modules["*"] += members
            if own:
                target_rows[module_name] = indices(own)
                target_modules[module_name] = members
                module_params[module_name] = sum(p.numel() for _, p in own)
        rows[target] = target_rows
        modules[target] = target_modules
        describe[target] = {
            **subject.target(target).describe(),
            "n_params": sum(p.numel() for _, p in named),
            "modules": module_params,
        }
    return TargetLayout(params, rows, describe, modules)


def _pass_seed(seed: int, batch_index: int) -> int:
    return int(np.random.SeedSequence([seed % 2**63, batch_index]).generate_state(1, dtype=np.uint64)[0] >> 1)


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


@dataclass
class PassEngine:
    """Runs passes of one subject: hooks and layouts are built once, every pass is verified."""

    subject: Subject
    runtime: Runtime
    layout: TargetLayout
    settings: Sequence[Setting]
    #: gradient path used -> why (empty reason for the default path)
    paths: dict[GradientPath, str] = field(default_factory=dict)
    #: branch -> module name -> [fewest, most] forward calls in one pass
    calls: dict[str, dict[str, list[int]]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        aliases = self.runtime.aliases
        names = {b for s in self.settings for b in s.ablations}
        self.branch_modules: dict[str, list[tuple[str, nn.Module]]] = {}
        for name in names:
            modules, notes = branch_modules(self.subject.model, self.subject.branch(name), aliases)
            self.branch_modules[name] = modules
            self.notes += [f"branch {name}: {note}" for note in notes]
        watched: list[tuple[str, nn.Module]] = []
        for modules in self.branch_modules.values():
            for name, module in modules:
                watched += [(n, module.get_submodule(n[len(name) + 1:]) if n != name else module)
                            for n in _with_descendants(name, module)]
        for target in self.layout.modules:
            for name, module in self.subject.target_modules(target):
                watched += [(n, module.get_submodule(n[len(name) + 1:]) if n != name else module)
                            for n in _with_descendants(name, module)]
        self.watch = ForwardCalls(watched)
        self.ablations = {s.name: Ablation(self.subject.model, s.ablations, aliases) for s in self.settings
                          if s.ablations}

    @property
    def reentrant(self) -> bool:
        """Whether a pass went through reentrant activation checkpointing."""
        return "reentrant" in self.paths.get("backward", "")

    def run(self, batch: Any, setting: Setting) -> dict[str, Any]:
        """One verified pass: ``{"loss", "norms" (target -> row -> norm), "ran" (target -> row -> bool)}``."""
        ablation = self.ablations.get(setting.name)
        self.watch.reset()
        if ablation is not None:
            for name in ablation.calls:
                ablation.calls[name] = 0
        with self.watch, (ablation if ablation is not None else _nothing()):
            loss = _check_loss(self.subject.loss_fn(self.subject.model, batch))
            if ablation is not None:
                ablation.verify(self.watch.counts)
            self._count_calls(setting)
            path, reason = choose_path(loss, self.layout.params, sharded=self.runtime.scope == "fsdp2")
            self.paths.setdefault(path, reason)
            grads = gradients(loss, self.layout.params, path, self.subject.model)
        loss_value, param_norms = reduce_pass(self.runtime, loss, grads, self.layout.params)
        counts, off = self.watch.counts, self.watch.no_grad_counts
        ran = {target: {row: _ran(members, counts, off) for row, members in rows.items()}
               for target, rows in self.layout.modules.items()}
        return {"loss": loss_value, "norms": _group_norms(self.layout, param_norms), "ran": ran}

    def _count_calls(self, setting: Setting) -> None:
        for branch, modules in self.branch_modules.items():
            for name, _ in modules:
                count = self.watch.counts.get(name, 0)
                low_high = self.calls.setdefault(branch, {}).setdefault(name, [count, count])
                low_high[0], low_high[1] = min(low_high[0], count), max(low_high[1], count)


def _ran(members: list[str], counts: Mapping[str, int], no_grad: Mapping[str, int]) -> str:
    """"yes" when a member module ran with gradient recording on, "no_grad" when only with it off, else "no"."""
    if any(counts.get(m, 0) > no_grad.get(m, 0) for m in members):
        return "yes"
    return "no_grad" if any(counts.get(m, 0) for m in members) else "no"


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def _group_norms(layout: TargetLayout, param_norms: list[float | None]) -> dict[str, dict[str, float | None]]:
    return {
        target: {row: combine_norms([param_norms[i] for i in idx]) for row, idx in rows.items()}
        for target, rows in layout.rows.items()
    }


def run_passes(
    subject: Subject,
    settings: Sequence[Setting],
    target_names: Sequence[str],
    n_batches: int,
    seed: int,
    progress: ProgressFn | None = None,
) -> tuple[PassEngine, list[dict[str, Any]]]:
    """Run every setting on every batch; return the engine (layout, paths, call counts) and one entry per pass."""
    runtime = inspect_model(subject.wrapped_model)
    layout = _layout(subject, target_names)
    engine = PassEngine(subject, runtime, layout, settings)
    passes: list[dict[str, Any]] = []
    total = n_batches * len(settings)
    with _SavedRng(), torch.enable_grad(), runtime.measuring():
        for batch_index in range(n_batches):
            batch = subject.batch(batch_index)
            pass_seed = _pass_seed(seed, batch_index)
            for setting in settings:
                _seed_everything(pass_seed)
                result = engine.run(batch, setting)
                passes.append({"batch": batch_index, "setting": setting.name, **result})
                if progress is not None:
                    progress(len(passes), total)
    return engine, passes


REENTRANT_HINT = (" With use_reentrant=True checkpointing, a region none of whose inputs requires grad gives its "
                  "parameters no gradient at all (torch warns 'None of the inputs have requires_grad=True'): use "
                  "use_reentrant=False, or make an input of the region require grad.")
NO_GRAD_HINT = (" Their forward ran only with gradient recording off (under torch.no_grad(), or inside a "
                "use_reentrant=True checkpoint none of whose inputs requires grad, which then gives the parameters "
                "inside no gradient: use use_reentrant=False, or make an input of the region require grad).")


def _status(with_values: list, without_values: list, with_ran: list[str], without_ran: list[str],
            reentrant: bool = False) -> tuple[str, str]:
    for values, ran, side in ((with_values, with_ran, "with the branch"),
                              (without_values, without_ran, "with the branch ablated")):
        idle = sum(1 for v, r in zip(values, ran, strict=True) if v is None and r == "no")
        if idle:
            return "not_run", (f"the target's modules never ran in the forward pass {side} ({idle} of {len(values)} "
                               "batches): the loss does not use them, so there is no gradient to measure")
    if any(v is None for v in with_values) or any(v is None for v in without_values):
        side = "with the branch" if any(v is None for v in with_values) else "with the branch ablated"
        grad_off = any(v is None and r == "no_grad" for v, r in zip(with_values + without_values,
                                                                   with_ran + without_ran, strict=True))
        hint = NO_GRAD_HINT if grad_off else (REENTRANT_HINT if reentrant else "")
        return "no_grad", (f"the target's modules ran but received no gradient {side} in at least one batch "
                           "(their output does not reach the loss, or it is detached)." + hint)
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
    reentrant: bool = False,
) -> list[dict[str, Any]]:
    """One row per (comparison, target, module). ``comparisons`` holds ``(branch, numerator setting,
    denominator setting, scale)``; retention = mean numerator norm / mean denominator norm. ``reentrant``:
    the passes went through reentrant checkpointing (explains missing gradients)."""
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
                with_ran = [p["ran"][target][module] for p in by_setting[numerator]]
                without_ran = [p["ran"][target][module] for p in by_setting[denominator]]
                status, note = _status(with_values, without_values, with_ran, without_ran, reentrant)
                row: dict[str, Any] = {
                    "branch": branch, "target": target, "module": module, "scale": scale,
                    "norm_with": None, "norm_without": None, "retention": None,
                    "ci_low": None, "ci_high": None, "n_batches": n_batches,
                    "per_batch": [None] * n_batches, "status": status, "note": note,
                }
                if status not in ("no_grad", "not_run"):
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


@overload
def compare(
    subject_or_model: Subject,
    *,
    batches: int | None = None,
    branches: str | Sequence[str] | None = None,
    targets: str | Sequence[str] | None = None,
    seed: int = 0,
    confidence: float = 0.95,
    progress: ProgressFn | None = None,
) -> RunRecord: ...


@overload
def compare(
    subject_or_model: nn.Module,
    loss_fn: Callable[[nn.Module, Any], torch.Tensor],
    batches: Sequence[Any],
    *,
    branches: Mapping[str, Any],
    targets: Mapping[str, Any],
    seed: int = 0,
    confidence: float = 0.95,
    progress: ProgressFn | None = None,
) -> RunRecord: ...


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
    default to what the subject says, else all it defines), or ``compare(model, loss_fn, batch_list,
    branches={name: selector}, targets={name: selector})``.

    Args:
        subject_or_model: a :class:`Subject`, or a model (``torch.compile``, DDP and FSDP2 models work).
        loss_fn: ``loss_fn(model, batch) -> scalar tensor`` (bare-model form only).
        batches: the number of batches to use (Subject form) or the list of batches (bare-model form).
        branches: branch names (Subject form) or ``{name: selector | Branch}`` (bare-model form).
        targets: target names (Subject form) or ``{name: selector | Target}`` (bare-model form).
        seed: seeds each batch's passes (dropout) and the interval's resampling.
        confidence: level of the retention intervals.
        progress: ``progress(done, total)`` called after every pass.

    Returns:
        The :class:`RunRecord` with one retention row per (branch, target) and per target module.

    Raises:
        SubjectError, SelectorError, LossError, AblationError: bad input, a selector that matches nothing, a
            loss that is not a differentiable scalar, a branch module that never ran (nothing was ablated).
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
    settings = [Setting(REFERENCE)] + [
        Setting(f"without:{name}", {name: subject.branch(name)}) for name in branch_names
    ]
    engine, passes = run_passes(subject, settings, target_names, n_batches, seed, progress)
    comparisons = [(name, REFERENCE, f"without:{name}", None) for name in branch_names]
    rows = retention_rows(engine.layout, passes, comparisons, n_batches, seed, confidence, engine.reentrant)
    return _record("compare", subject, engine, settings, passes, rows, branch_names, seed, n_batches, confidence,
                   started)


def _record(kind: str, subject: Subject, engine: PassEngine, settings: Sequence[Setting], passes: list[dict],
            rows: list[dict], branch_names: Sequence[str], seed: int, n_batches: int, confidence: float,
            started: float, warnings: Sequence[str] = ()) -> RunRecord:
    branches = {}
    for name in branch_names:
        calls = engine.calls.get(name, {})
        branches[name] = {
            **subject.branch(name).describe(),
            "modules": [m for m, _ in engine.branch_modules[name]],
            "calls_per_pass": [min((c[0] for c in calls.values()), default=0),
                               max((c[1] for c in calls.values()), default=0)],
        }
    measurement = {
        "gradient_paths": dict(engine.paths),
        "runtime": engine.runtime.describe(),
        "notes": [*engine.runtime.notes, *engine.notes,
                  *(f"gradients through {path}: {why}" for path, why in engine.paths.items() if why)],
        "warnings": list(warnings),
    }
    return build_record(
        kind=kind, subject=subject, seed=seed, n_batches=n_batches, confidence=confidence,
        branches=branches, targets=engine.layout.describe, settings=settings,
        passes=[{k: v for k, v in p.items() if k != "ran"} for p in passes], rows=rows,
        batch_seeds=[_pass_seed(seed, i) for i in range(n_batches)], measurement=measurement,
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
    """Retention as a function of branch scale: norm with the branch output × s over norm with it zeroed.

    Args:
        subject: the :class:`Subject`.
        branch: the branch whose output is scaled.
        scales: the scales to measure (0 equals the zeroed reference).
        batches, targets, seed, confidence, progress: as in :func:`compare`.

    Returns:
        A sweep :class:`RunRecord` (one row per scale, target and module); ``measurement.warnings`` says when
        retention did not move with the scale (the model renormalises the branch downstream).
    """
    started = time.perf_counter()
    if not scales:
        raise SubjectError("sweep needs at least one scale, e.g. scales=[0, 0.1, 0.5, 1].")
    selector = subject.branch(branch).selector
    target_names = _resolve_names(targets or subject.default_targets, subject.targets, "targets", subject.target)
    n_batches = _batch_count(subject, batches)
    reference = Setting(f"without:{branch}", {branch: Branch(selector, "zero")})
    scaled = [Setting(f"scale={float(s):g}:{branch}", {branch: Branch(selector, "scale", float(s))}, float(s))
              for s in scales]
    settings = [reference, *scaled]
    engine, passes = run_passes(subject, settings, target_names, n_batches, seed, progress)
    comparisons = [(branch, s.name, reference.name, s.scale) for s in scaled]
    rows = retention_rows(engine.layout, passes, comparisons, n_batches, seed, confidence, engine.reentrant)
    return _record("sweep", subject, engine, settings, passes, rows, [branch], seed, n_batches, confidence,
                   started, warnings=scale_insensitive(rows, branch))


def scale_insensitive(rows: Sequence[dict[str, Any]], branch: str) -> list[str]:
    """Warnings for whole targets whose retention is the same at every non-zero scale of a sweep.

    Scaling a module's output does nothing when the model renormalises it downstream (e.g. a branch whose
    output is norm-matched to the hidden state after the hooked module): the sweep then measures nothing.
    """
    warnings = []
    by_target: dict[str, list[float]] = {}
    for row in rows:
        if row["module"] == "*" and row["scale"] and row["status"] == "ok" and row["retention"] is not None:
            by_target.setdefault(row["target"], []).append(row["retention"])
    for target, values in by_target.items():
        spread = max(values) - min(values) if values else 0.0
        matters = any(abs(v - 1.0) >= 1e-4 for v in values)  # the branch changes the gradient, its scale does not
        if len(values) >= 2 and matters and spread <= 1e-5 * abs(max(values)):
            warnings.append(
                f"retention of {target} is {values[0]:.4g} at every non-zero scale of {branch}: scaling the hooked "
                "module's output changed nothing, so the model probably renormalises it downstream (a norm-matched "
                "branch). Hook the module after the renormalisation, or scale the branch's own weight instead.")
    return warnings
