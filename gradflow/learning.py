"""The learning probe: does the branch slow the training of what the subject trains?

``learn`` trains the subject's trainable parameters for K steps from the same initial state, once with the
branch active, once with it ablated (and once per ``scales``), on the same batches in the same order with
the same RNG. It records the training loss of every step, the held-out loss on fixed evaluation batches, and
the target gradient norms of every step, and reports the **learning ratio** = held-out loss decrease with
the branch / decrease without it. Its interval is over the evaluation batches (jackknife SE of the ratio of
mean per-batch decreases, Student t with E - 1 degrees of freedom): it says how sure the ratio is given the
evaluation data, not how it would vary with another training seed.

gradflow builds its own optimizer and never touches the user's; the model's parameters, buffers, ``.grad``,
modes, ``requires_grad`` and every RNG are restored exactly afterwards, also when a run raises.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from .ablation import Ablation
from .errors import SubjectError
from .gradients import choose_path, gradients
from .norms import combine_norms, to_floats, vector_norms
from .passes import SavedRng, Setting, check_loss, pass_seed, seed_everything, target_layout
from .record import RunRecord, build_record
from .runtime import inspect_model
from .stats import t_quantile
from .subject import Branch, Subject

OPTIMIZERS = ("adam", "sgd")
EVAL_SEED_OFFSET = 1_000_003  # evaluation batches draw their RNG from seeds no training step uses


@dataclass
class LearningRun:
    """What one setting's training produced."""

    setting: str
    train_loss: list[float] = field(default_factory=list)
    eval_steps: list[int] = field(default_factory=list)
    eval_loss: list[float] = field(default_factory=list)
    eval_first: list[float] = field(default_factory=list)  # per evaluation batch, before training
    eval_last: list[float] = field(default_factory=list)  # per evaluation batch, after the last step
    target_norms: dict[str, list[float | None]] = field(default_factory=dict)
    status: str = "ok"
    diverged_at: int | None = None

    def describe(self) -> dict[str, Any]:
        """JSON-ready description for run records."""
        return {"train_loss": self.train_loss, "eval_steps": self.eval_steps, "eval_loss": self.eval_loss,
                "eval_first": self.eval_first, "eval_last": self.eval_last, "target_norms": self.target_norms,
                "status": self.status, "diverged_at": self.diverged_at}


class _ModelState:
    """A snapshot of everything training changes, restored exactly (parameter objects keep their identity)."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.params = [(p, p.detach().clone(), p.grad, p.requires_grad) for p in model.parameters()]
        self.buffers = [(b, b.detach().clone()) for b in model.buffers()]
        self.modes = [(m, m.training) for m in model.modules()]

    def reset_values(self) -> None:
        """Parameters and buffers back to the snapshot (between settings)."""
        with torch.no_grad():
            for param, value, _, _ in self.params:
                param.copy_(value)
            for buffer, value in self.buffers:
                buffer.copy_(value)

    def restore(self) -> None:
        """Everything back: values, ``.grad`` objects, ``requires_grad``, train/eval modes."""
        self.reset_values()
        for param, _, grad, requires in self.params:
            param.grad = grad
            param.requires_grad_(requires)
        for module, training in self.modes:
            module.training = training


def _optimizer(name: str, params: list[nn.Parameter], lr: float, betas: tuple[float, float]) -> torch.optim.Optimizer:
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, betas=betas)
    return torch.optim.SGD(params, lr=lr)


def _check_arguments(steps: Any, optimizer: str, lr: Any, eval_batches: Any) -> None:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise SubjectError(f"steps must be a whole number of at least 1, got {steps!r}.")
    if optimizer not in OPTIMIZERS:
        raise SubjectError(f"optimizer {optimizer!r} is unknown; use one of: {', '.join(OPTIMIZERS)}.")
    if isinstance(lr, bool) or not isinstance(lr, int | float) or not math.isfinite(lr) or lr <= 0:
        raise SubjectError(f"lr must be a positive finite number, got {lr!r}.")
    if isinstance(eval_batches, bool) or not isinstance(eval_batches, int) or eval_batches < 2:
        raise SubjectError(f"eval_batches must be a whole number of at least 2 (the interval needs two), got "
                           f"{eval_batches!r}.")


def learning_ratio(with_first: Sequence[float], with_last: Sequence[float], without_first: Sequence[float],
                   without_last: Sequence[float], confidence: float = 0.95
                   ) -> tuple[float | None, tuple[float, float] | None, str, str]:
    """``(ratio, interval, status, note)`` of mean loss decrease with the branch / without it.

    The decreases are per evaluation batch (paired: the same batches in both runs); the interval is the
    jackknife SE of the ratio of means with a Student t of E - 1 degrees of freedom (the ratio itself, not its
    log: a decrease can be negative).
    """
    x = np.asarray(with_first, dtype=float) - np.asarray(with_last, dtype=float)
    y = np.asarray(without_first, dtype=float) - np.asarray(without_last, dtype=float)
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        return None, None, "non_finite", "a held-out loss is NaN or Inf"
    if y.mean() <= 0:
        return None, None, "undefined", (f"without the branch the held-out loss did not decrease ({-y.mean():+.4g}): "
                                         "there is no learning to compare with; train longer or with a larger lr")
    ratio = float(x.mean() / y.mean())
    n = len(x)
    loo_x = (x.sum() - x) / (n - 1)
    loo_y = (y.sum() - y) / (n - 1)
    if np.any(loo_y <= 0):
        return ratio, (-math.inf, math.inf), "ok", "the decrease without the branch is too small to bound the ratio"
    loo = loo_x / loo_y
    se = math.sqrt((n - 1) / n * float(((loo - loo.mean()) ** 2).sum()))
    half = float(t_quantile(confidence, n - 1)) * se
    return ratio, (ratio - half, ratio + half), "ok", ""


@contextlib.contextmanager
def _ablated(ablation: Ablation | None) -> Iterator[Ablation | None]:
    """The setting's ablation hooks on for one step (counts reset), verified on a clean exit."""
    if ablation is None:
        yield None
        return
    for name in ablation.calls:
        ablation.calls[name] = 0
    with ablation:
        yield ablation
        ablation.verify()


def _eval_losses(subject: Subject, ablation: Ablation | None, first: int, count: int, seed: int) -> list[float]:
    losses = []
    with torch.no_grad(), _ablated(ablation):
        for index in range(first, first + count):
            seed_everything(pass_seed(seed + EVAL_SEED_OFFSET, index))
            loss = subject.loss_fn(subject.model, subject.batch(index))
            losses.append(float(torch.as_tensor(loss).detach().double().reshape(-1)[0]))
    return losses


def _train(subject: Subject, setting: Setting, params: list[nn.Parameter], layout: Any, aliases: Sequence[str],
           steps: int, n_train: int, first_eval: int, optimizer: str, lr: float, betas: tuple[float, float],
           eval_batches: int, eval_every: int, seed: int, progress: Callable[[], None] | None) -> LearningRun:
    run = LearningRun(setting.name, target_norms={t: [] for t in layout.rows})
    opt = _optimizer(optimizer, params, lr, betas)
    ablation = Ablation(subject.model, setting.ablations, aliases) if setting.ablations else None
    index = {id(p): i for i, p in enumerate(params)}
    run.eval_first = _eval_losses(subject, ablation, first_eval, eval_batches, seed)
    run.eval_steps.append(0)
    run.eval_loss.append(math.fsum(run.eval_first) / eval_batches)
    for step in range(steps):
        seed_everything(pass_seed(seed, step))
        with _ablated(ablation):
            loss = check_loss(subject.loss_fn(subject.model, subject.batch(step % n_train)))
            path, _ = choose_path(loss, params, sharded=False)
            grads = gradients(loss, params, path, subject.model)
        value = float(loss.detach().double())
        run.train_loss.append(value)
        present = [g for g in grads if g is not None]
        norms = iter(to_floats(vector_norms(present)))
        per_param = [None if g is None else next(norms) for g in grads]
        for target, rows in layout.rows.items():
            run.target_norms[target].append(combine_norms(per_param[index[id(layout.params[i])]]
                                                          for i in rows["*"]))
        if not math.isfinite(value) or not all(n is None or math.isfinite(n) for n in per_param):
            run.status, run.diverged_at = "diverged", step
            break
        for param, grad in zip(params, grads, strict=True):
            param.grad = grad
        opt.step()
        for param in params:
            param.grad = None
        if progress is not None:
            progress()
        done = step + 1
        if done % eval_every == 0 or done == steps:
            losses = _eval_losses(subject, ablation, first_eval, eval_batches, seed)
            run.eval_steps.append(done)
            run.eval_loss.append(math.fsum(losses) / eval_batches)
            if done == steps:
                run.eval_last = losses
    return run


def learn(
    subject: Subject,
    branch: str | None = None,
    *,
    steps: int,
    optimizer: str = "adam",
    lr: float = 1e-3,
    betas: tuple[float, float] = (0.9, 0.999),
    scales: Sequence[float] | None = None,
    eval_batches: int = 4,
    eval_every: int | None = None,
    targets: Any = None,
    train: str = "all",
    seed: int = 0,
    confidence: float = 0.95,
    progress: Callable[[int, int], None] | None = None,
) -> RunRecord:
    """Train what the subject trains for ``steps`` steps with and without ``branch``; compare the learning.

    Args:
        subject: the :class:`Subject`; its trainable parameters (``requires_grad``) are what is trained.
        branch: the branch to ablate (default: the subject's first default branch).
        steps: training steps per setting, on the same batches in the same order in every setting (a sized
            source holds its last ``eval_batches`` out and cycles over the rest; an endless one trains on
            batches ``0 .. steps-1``).
        optimizer: ``"adam"`` or ``"sgd"`` (gradflow's own; the user's is never touched).
        lr: learning rate. betas: Adam's betas.
        scales: also train with the branch output scaled by each of these.
        eval_batches: held-out batches evaluated before, during and after training (at least 2).
        eval_every: evaluate every this many steps (default: about ten points per curve).
        targets: target names whose gradient norms are recorded per step (default: the subject's).
        train: ``"all"`` trains every trainable parameter of the subject (the branch's own included: with the
            branch the model also has more to learn with); ``"targets"`` trains only the targets' parameters
            in every run, which isolates how much the targets themselves learn.
        seed: seeds every step's RNG (the same per step in every setting) and the evaluation passes.
        confidence: level of the learning-ratio interval.
        progress: ``progress(done, total)`` after every training step.

    Returns:
        A run record of kind ``"learn"`` whose ``learning`` block holds the curves and the ratio rows.

    Raises:
        SubjectError: bad arguments, a source with too few batches, or a distributed model (not supported).
    """
    started = time.perf_counter()
    _check_arguments(steps, optimizer, lr, eval_batches)
    branch = branch or (subject.default_branches or list(subject.branches) or [None])[0]
    if branch is None:
        raise SubjectError("learn needs a branch to ablate; the subject defines none.")
    selector = subject.branch(branch).selector
    available = subject.available_batches()
    if available is not None and available < eval_batches + 1:
        raise SubjectError(f"learn needs at least {eval_batches + 1} batches ({eval_batches} held out for evaluation "
                           f"and one to train on); the subject has {available}.")
    # A sized source: the last eval_batches are held out, training cycles over the rest (epochs). An endless
    # one: training takes batches 0 .. steps-1, evaluation the next eval_batches.
    n_train = steps if available is None else available - eval_batches
    first_eval = n_train
    from .measure import _resolve_names, validate_scales

    target_names = _resolve_names(targets or subject.default_targets, subject.targets, "targets", subject.target)
    runtime = inspect_model(subject.wrapped_model)
    if runtime.is_global:
        raise SubjectError("learn does not run under DDP/FSDP2 yet: run it in one process on the unwrapped model.")
    if train not in ("all", "targets"):
        raise SubjectError(f"train must be 'all' or 'targets', got {train!r}.")
    params = [p for p in subject.model.parameters() if p.requires_grad]
    if not params:
        raise SubjectError("the subject has no trainable parameter (requires_grad); there is nothing to train.")
    layout = target_layout(subject, target_names)
    if train == "targets":
        params = list(layout.params)
    settings = [Setting("with"), Setting(f"without:{branch}", {branch: subject.branch(branch)})]
    settings += [Setting(f"scale={s!r}:{branch}", {branch: Branch(selector, "scale", s)}, s)
                 for s in validate_scales(scales)] if scales else []
    every = eval_every or max(1, steps // 10)
    total, done = steps * len(settings), [0]

    def tick() -> None:
        done[0] += 1
        if progress is not None:
            progress(done[0], total)

    state = _ModelState(subject.model)
    runs: dict[str, LearningRun] = {}
    try:
        with SavedRng(), torch.enable_grad(), runtime.measuring():
            for setting in settings:
                state.reset_values()
                runs[setting.name] = _train(subject, setting, params, layout, runtime.aliases, steps, n_train,
                                            first_eval, optimizer, lr, betas, eval_batches, every, seed, tick)
    finally:
        state.restore()
    rows = _learning_rows(runs, settings, branch, confidence)
    learning = {"steps": steps, "train": train, "train_batches": n_train, "first_eval_batch": first_eval,
                "optimizer": {"name": optimizer, "lr": lr, "betas": list(betas)},
                "eval_batches": eval_batches, "eval_every": every, "interval": "jackknife of the ratio of mean "
                "per-batch held-out loss decreases, Student t with E-1 df (over evaluation batches, not seeds)",
                "runs": {name: run.describe() for name, run in runs.items()}, "rows": rows}
    branches = {branch: {**subject.branch(branch).describe(), "modules": [], "calls_per_pass": [0, 0]}}
    measurement = {"gradient_paths": {}, "runtime": runtime.describe(), "notes": list(runtime.notes), "warnings": []}
    return build_record(kind="learn", subject=subject, seed=seed, n_batches=steps, confidence=confidence,
                        branches=branches, targets=layout.describe, settings=settings, passes=[], rows=[],
                        batch_seeds=[pass_seed(seed, i) for i in range(steps)], measurement=measurement,
                        elapsed_s=time.perf_counter() - started, learning=learning)


def _learning_rows(runs: dict[str, LearningRun], settings: list[Setting], branch: str, confidence: float
                   ) -> list[dict[str, Any]]:
    reference = runs[f"without:{branch}"]
    rows = []
    for setting in settings:
        if setting.name == reference.setting:
            continue
        run = runs[setting.name]
        row: dict[str, Any] = {"branch": branch, "scale": setting.scale, "numerator": setting.name,
                               "denominator": reference.setting, "decrease_with": None, "decrease_without": None,
                               "learning_ratio": None, "ci_low": None, "ci_high": None,
                               "n_eval_batches": len(run.eval_first), "status": "ok", "note": ""}
        diverged = [r for r in (run, reference) if r.status == "diverged"]
        if diverged:
            row["status"] = "diverged"
            row["note"] = "; ".join(f"{r.setting} diverged at step {r.diverged_at} (NaN or Inf loss or gradient)"
                                    for r in diverged)
            rows.append(row)
            continue
        row["decrease_with"] = math.fsum(run.eval_first) / len(run.eval_first) - math.fsum(run.eval_last) / len(
            run.eval_last)
        row["decrease_without"] = math.fsum(reference.eval_first) / len(reference.eval_first) - math.fsum(
            reference.eval_last) / len(reference.eval_last)
        ratio, interval, status, note = learning_ratio(run.eval_first, run.eval_last, reference.eval_first,
                                                       reference.eval_last, confidence)
        row.update(learning_ratio=ratio, status=status, note=note)
        if interval is not None:
            row["ci_low"], row["ci_high"] = interval
        rows.append(row)
    return rows
