"""``compare`` and ``sweep``: retention of each target with and without each branch, over batches.

The passes are run by :mod:`gradflow.passes` and turned into rows by :mod:`gradflow.retention`. The number of
batches is fixed (``batches=N``) or sequential (``batches="auto"``): batches are added at the looks of a
pre-planned group-sequential :class:`gradflow.stats.Schedule` until every decisive row's interval lies wholly
inside or wholly outside its band (or is narrower than ``precision``), or ``max_batches`` is reached. Each
look's interval is at the Bonferroni-adjusted level, so the interval reported where the run stopped stays
valid although the run looked at every look. The record says which rule ran, how many batches it used and
why it stopped.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, overload

import torch
from torch import nn

from .errors import SubjectError
from .passes import (
    REFERENCE,
    PassEngine,
    ProgressFn,
    SavedRng,
    Setting,
    pass_seed,
    run_batch,
    target_layout,
)
from .record import RunRecord, build_record
from .retention import retention_rows, scale_insensitive
from .runtime import inspect_model
from .stats import Schedule
from .subject import Branch, Subject
from .verdicts import Band, RowStatus

#: A run asking for more batches than this is refused: it would not end in a useful time.
MAX_BATCHES = 10_000
BatchCount = int | Literal["auto"] | None
BandFor = Callable[[dict[str, Any]], "Band | None"]


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
        if batches is not None and batches != "auto" and (isinstance(batches, bool) or not isinstance(batches, int)):
            raise SubjectError("with a Subject, batches= is the number of batches to use (an int) or 'auto'.")
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
    if isinstance(requested, bool) or not isinstance(requested, int):
        raise SubjectError(f"batches must be a whole number or 'auto', got {requested!r}.")
    if requested < 1:
        raise SubjectError(f"batches must be at least 1, got {requested}.")
    if requested > MAX_BATCHES:
        raise SubjectError(f"batches={requested:,} is more than gradflow runs ({MAX_BATCHES:,}): that many passes "
                           "would not end in a useful time. Use batches='auto' to stop when the answer is clear, or "
                           "ask for fewer batches.")
    if available is not None and requested > available:
        raise SubjectError(
            f"asked for {requested} batches but the subject has {available}; use batches<={available}."
        )
    return requested


def _schedule(subject: Subject, max_batches: int | None, confidence: float) -> Schedule:
    available = subject.available_batches()
    limit = max_batches if max_batches is not None else 24
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 2:
        raise SubjectError(f"max_batches must be a whole number of at least 2, got {limit!r}.")
    if limit > MAX_BATCHES:
        raise SubjectError(f"max_batches={limit:,} is more than gradflow runs ({MAX_BATCHES:,}).")
    if available is not None:
        if available < 2:
            raise SubjectError(f"batches='auto' needs at least 2 batches; the subject has {available}.")
        limit = min(limit, available)
    return Schedule(first=min(3, limit), max_batches=limit, confidence=confidence)


def _decided(rows: Sequence[dict[str, Any]], band_for: BandFor, precision: float | None) -> str | None:
    """Why the run may stop ("decided", "precise"), or None. Rows without a band or a number are settled."""
    decided = precise = True
    for row in rows:
        band = band_for(row)
        if band is None or row["status"] != RowStatus.OK:
            continue
        low, high = row["ci_low"], row["ci_high"]
        if low is None:
            return None
        inside = (band.min_retention is None or low >= band.min_retention) and (
            band.max_retention is None or high <= band.max_retention)
        outside = (band.min_retention is not None and high < band.min_retention) or (
            band.max_retention is not None and low > band.max_retention)
        decided = decided and (inside or outside)
        precise = precise and precision is not None and high - low <= precision
    if decided:
        return "decided"
    return "precise" if precise else None


def _whole_targets(band: Band) -> BandFor:
    return lambda row: band if row["module"] == "*" else None


def _measure(
    subject: Subject,
    settings: list[Setting],
    comparisons: list[tuple[str, str, str, float | None]],
    target_names: Sequence[str],
    batches: BatchCount,
    seed: int,
    confidence: float,
    progress: ProgressFn | None,
    band_for: BandFor,
    precision: float | None,
    max_batches: int | None,
) -> tuple[PassEngine, list[dict[str, Any]], list[dict[str, Any]], dict[str, Any]]:
    """Run batches (fixed or sequential) and return the engine, passes, rows and the batch rule."""
    if precision is not None and not (isinstance(precision, int | float) and 0 < precision < float("inf")):
        raise SubjectError(f"precision must be a positive number (the interval width to stop at), got {precision!r}.")
    if batches is None:
        batches = subject.default_batches  # a subject may default to "auto" (the AA-CLIP one does)
    sequential = batches == "auto"
    schedule = _schedule(subject, max_batches, confidence) if sequential else None
    n_max = schedule.max_batches if schedule else _batch_count(subject, batches)  # type: ignore[arg-type]
    level = schedule.look_confidence if schedule else confidence
    runtime = inspect_model(subject.wrapped_model)
    engine = PassEngine(subject, runtime, target_layout(subject, target_names), settings)
    passes: list[dict[str, Any]] = []
    looks = set(schedule.looks) if schedule else {n_max}
    reason, used, rows = "fixed", n_max, []
    with SavedRng(), engine.state, torch.enable_grad(), runtime.measuring():
        for batch_index in range(n_max):
            passes += run_batch(engine, batch_index, seed)
            if progress is not None:
                progress(len(passes), n_max * len(settings))
            done = batch_index + 1
            if done in looks:
                rows = retention_rows(engine.layout, passes, comparisons, done, level, engine.reentrant)
                why = _decided(rows, band_for, precision) if schedule else None
                if why is not None or done == n_max:
                    reason, used = (why or ("max_batches" if schedule else "fixed")), done
                    break
    partial = engine.first_item_branches()
    for row in rows:
        if row["status"] == "no_effect" and row["branch"] in partial:
            row["note"] = ("identical norms with and without the branch's first output item; only that item was "
                           "switched off (see the warnings): the tensors after it may still reach this target")
    rule: dict[str, Any] = {"rule": "fixed", "confidence": confidence}
    if schedule is not None:
        rule = {**schedule.describe(), "stopped_at": used, "reason": reason, "precision": precision}
    return engine, [p for p in passes if p["batch"] < used], rows, rule


@overload
def compare(
    subject_or_model: Subject,
    *,
    batches: BatchCount = None,
    branches: str | Sequence[str] | None = None,
    targets: str | Sequence[str] | None = None,
    seed: int = 0,
    confidence: float = 0.95,
    band: Band | None = None,
    precision: float | None = None,
    max_batches: int | None = None,
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
    n_batches: BatchCount = None,
    band: Band | None = None,
    precision: float | None = None,
    max_batches: int | None = None,
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
    n_batches: BatchCount = None,
    band: Band | None = None,
    precision: float | None = None,
    max_batches: int | None = None,
    progress: ProgressFn | None = None,
    band_for: BandFor | None = None,
) -> RunRecord:
    """Measure how much gradient each target keeps when each branch is active vs. ablated.

    Two call forms: ``compare(subject, batches=N | "auto", seed=S, branches=[names], targets=[names])``
    (names default to what the subject says, else all it defines), or ``compare(model, loss_fn, batch_list,
    branches={name: selector}, targets={name: selector}, n_batches=N | "auto")``.

    Args:
        subject_or_model: a :class:`Subject`, or a model (``torch.compile``, DDP and FSDP2 models work).
        loss_fn: ``loss_fn(model, batch) -> scalar tensor`` (bare-model form only).
        batches: the number of batches, or ``"auto"`` (Subject form); the list of batches (bare-model form).
        branches: branch names (Subject form) or ``{name: selector | Branch}`` (bare-model form).
        targets: target names (Subject form) or ``{name: selector | Target}`` (bare-model form).
        seed: any integer; seeds each batch's passes (dropout).
        confidence: level of the retention intervals (and of the whole sequence of looks with ``"auto"``).
        n_batches: the number of batches or ``"auto"`` in the bare-model form (default: every batch given).
        band: with ``"auto"``, the band whose verdict must be decided for every whole-target row
            (default ``[0.8, inf)``).
        precision: with ``"auto"``, also stop once every whole-target interval is narrower than this.
        max_batches: with ``"auto"``, the most batches to run (default 24, or what the source holds).
        progress: ``progress(done, total)`` called after every pass.
        band_for: with ``"auto"``, ``band_for(row) -> Band | None``: which rows must be decided, and against
            which band (overrides ``band``; used by ``gradflow check`` for a spec's gated rows).

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
    if n_batches is not None:
        n_requested = n_batches
    branch_names = _resolve_names(branch_request or subject.default_branches, subject.branches, "branches",
                                  subject.branch)
    target_names = _resolve_names(target_request or subject.default_targets, subject.targets, "targets",
                                  subject.target)
    settings = [Setting(REFERENCE)] + [
        Setting(f"without:{name}", {name: subject.branch(name)}) for name in branch_names
    ]
    comparisons = [(name, REFERENCE, f"without:{name}", None) for name in branch_names]
    engine, passes, rows, rule = _measure(subject, settings, comparisons, target_names, n_requested, seed,
                                          confidence, progress, band_for or _whole_targets(band or Band()),
                                          precision, max_batches)
    return _record("compare", subject, engine, settings, passes, rows, branch_names, seed, rule, confidence,
                   started)


def _record(kind: str, subject: Subject, engine: PassEngine, settings: Sequence[Setting], passes: list[dict],
            rows: list[dict], branch_names: Sequence[str], seed: int, rule: dict[str, Any], confidence: float,
            started: float, warnings: Sequence[str] = ()) -> RunRecord:
    n_batches = rows[0]["n_batches"] if rows else 0
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
        "warnings": [*engine.warnings, *warnings],
    }
    return build_record(
        kind=kind, subject=subject, seed=seed, n_batches=n_batches, confidence=confidence,
        branches=branches, targets=engine.layout.describe, settings=settings,
        passes=[{k: v for k, v in p.items() if k != "ran"} for p in passes], rows=rows,
        batch_seeds=[pass_seed(seed, i) for i in range(n_batches)], measurement=measurement,
        batch_rule=rule, elapsed_s=time.perf_counter() - started,
    )


def sweep(
    subject: Subject,
    branch: str,
    scales: Sequence[float],
    *,
    batches: BatchCount = None,
    targets: Any = None,
    seed: int = 0,
    confidence: float = 0.95,
    band: Band | None = None,
    precision: float | None = None,
    max_batches: int | None = None,
    progress: ProgressFn | None = None,
) -> RunRecord:
    """Retention as a function of branch scale: norm with the branch output × s over norm with it zeroed.

    Args:
        subject: the :class:`Subject`.
        branch: the branch whose output is scaled.
        scales: distinct finite scales to measure (0 equals the zeroed reference).
        batches, targets, seed, confidence, band, precision, max_batches, progress: as in :func:`compare`.

    Returns:
        A sweep :class:`RunRecord` (one row per scale, target and module); ``measurement.warnings`` says when
        retention did not move with the scale (the model renormalises the branch downstream).
    """
    started = time.perf_counter()
    values = validate_scales(scales)
    selector = subject.branch(branch).selector
    target_names = _resolve_names(targets or subject.default_targets, subject.targets, "targets", subject.target)
    reference = Setting(f"without:{branch}", {branch: Branch(selector, "zero")})
    scaled = [Setting(f"scale={s!r}:{branch}", {branch: Branch(selector, "scale", s)}, s) for s in values]
    settings = [reference, *scaled]
    comparisons = [(branch, s.name, reference.name, s.scale) for s in scaled]
    engine, passes, rows, rule = _measure(subject, settings, comparisons, target_names, batches, seed, confidence,
                                          progress, _whole_targets(band or Band()), precision, max_batches)
    return _record("sweep", subject, engine, settings, passes, rows, [branch], seed, rule, confidence, started,
                   warnings=scale_insensitive(rows, branch))


def validate_scales(scales: Sequence[float]) -> list[float]:
    """``scales`` as distinct finite floats; anything else is a :class:`SubjectError` naming the bad value."""
    import math

    if isinstance(scales, str | bytes) or not isinstance(scales, Sequence) or not scales:
        raise SubjectError("sweep needs a non-empty list of scales, e.g. scales=[0, 0.1, 0.5, 1].")
    values = []
    for scale in scales:
        if isinstance(scale, bool) or not isinstance(scale, int | float) or not math.isfinite(scale):
            raise SubjectError(f"sweep scales must be finite numbers; got {scale!r}.")
        values.append(float(scale))
    twice = sorted({v for v in values if values.count(v) > 1})
    if twice:
        raise SubjectError(f"sweep scales must be distinct; {', '.join(repr(v) for v in twice)} appears more than "
                           "once.")
    return values
