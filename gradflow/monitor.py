"""Retention inside a training loop: a check every N steps, and cheap per-step gradient norms.

    monitor = gf.Monitor(model, loss_fn, branches={"cross": "blocks.*.cross"}, targets={"adapter": "**.adapter"},
                         every=100, batches=held_out, logger=writer.add_scalar)
    for step, batch in enumerate(loader):
        loss_fn(model, batch).backward()
        monitor.log_grad_norms(step)       # per-module norms of the real .grad: no extra pass
        optimizer.step(); optimizer.zero_grad()
        monitor.step(step, batch)          # every `every` steps: retention on the held-out (or this) batch

A check is a :func:`gradflow.compare` on the current weights: it runs its own passes, leaves ``.grad``,
the optimizer and every RNG stream exactly as they were (a run with the monitor ends with bit-identical
weights to one without), and costs ``(1 + K)`` forward+backward passes per batch for K branches, every N
steps. ``on_fail="stop"`` raises :class:`RetentionFailure` at the first check whose interval lies wholly
outside the band; ``"warn"`` warns and goes on.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from torch import nn

from .errors import GradflowError, SubjectError
from .verdicts import Band, Verdict, verdict

Logger = Callable[[str, float, int], Any]


class RetentionFailure(GradflowError):
    """A monitor's check found retention outside the band (``on_fail="stop"``)."""


class RetentionWarning(UserWarning):
    """A monitor's check found retention outside the band (``on_fail="warn"``)."""


def metric_name(branch: str, target: str, module: str = "*") -> str:
    """``retention/<branch>/<target>`` (whole target) or ``retention/<branch>/<target>/<module>``."""
    return f"retention/{branch}/{target}" + ("" if module == "*" else f"/{module}")


class Monitor:
    """Retention checks every ``every`` steps, and per-step gradient norms, for a plain training loop.

    Args:
        model: the model being trained (DDP/FSDP2 models give global numbers; every rank must call ``step``).
        loss_fn: ``loss_fn(model, batch) -> scalar tensor``.
        branches: ``{name: selector | Branch}`` to ablate in each check.
        targets: ``{name: selector | Target}`` whose retention is checked and whose ``.grad`` norms are logged.
        every: run a check when ``step % every == 0``.
        batches: held-out batches for the checks (default: the batch passed to :meth:`step`).
        band: the acceptable retention (default ``[0.8, inf)``).
        on_fail: ``"warn"``, ``"stop"`` (raise :class:`RetentionFailure`) or ``"ignore"``.
        logger: ``logger(name, value, step)`` for every number (e.g. ``SummaryWriter.add_scalar``).
        modules: also log per-module rows (``retention/<branch>/<target>/<module>``).
        seed: seed of the checks' passes (dropout), the same at every check.
    """

    def __init__(self, model: nn.Module, loss_fn: Callable[[nn.Module, Any], Any], *,
                 branches: Mapping[str, Any], targets: Mapping[str, Any], every: int = 100,
                 batches: Sequence[Any] | None = None, band: Band | None = None, on_fail: str = "warn",
                 logger: Logger | None = None, modules: bool = False, seed: int = 0) -> None:
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise SubjectError(f"every must be a whole number of steps (at least 1), got {every!r}.")
        if on_fail not in ("warn", "stop", "ignore"):
            raise SubjectError(f"on_fail must be 'warn', 'stop' or 'ignore', got {on_fail!r}.")
        from .subject import Subject

        probe = Subject(model, loss_fn, [None], branches=branches, targets=targets)  # validates selectors now
        for name in probe.branches:
            probe.branch_modules(name)
        #: (metric name, trainable parameters) of every target module, selected once
        self._grad_groups = [(f"grad_norm/{target}/{module_name}", [p for p in module.parameters() if p.requires_grad])
                             for target in probe.targets for module_name, module in probe.target_modules(target)]
        self.model, self.loss_fn = model, loss_fn
        self.branches, self.targets = dict(branches), dict(targets)
        self.every, self.batches, self.band = every, list(batches) if batches is not None else None, band or Band()
        self.on_fail, self.logger, self.modules, self.seed = on_fail, logger, modules, seed
        self.history: list[dict[str, Any]] = []
        self.failed: list[dict[str, Any]] = []
        self._grad_probe: Any = None

    # -- retention checks --------------------------------------------------------------------------
    def due(self, step: int) -> bool:
        """Whether ``step`` is a check step."""
        return step % self.every == 0

    def check(self, step: int, batch: Any = None) -> list[dict[str, Any]]:
        """Run a retention check now (whatever the step); returns the rows and logs them."""
        from .measure import compare

        batches = self.batches if self.batches is not None else [batch]
        if batches == [None]:
            raise SubjectError("Monitor.check needs a batch: pass one to step()/check(), or held-out batches= to "
                               "the Monitor.")
        record = compare(self.model, self.loss_fn, batches, branches=self.branches, targets=self.targets,
                         seed=self.seed)
        rows = [r for r in record.rows if self.modules or r["module"] == "*"]
        for row in rows:
            if row["retention"] is not None and math.isfinite(row["retention"]):
                self._log(metric_name(row["branch"], row["target"], row["module"]), row["retention"], step)
        self.history.append({"step": step, "record": record, "rows": rows})
        self._judge(step, [r for r in rows if r["module"] == "*"])
        return rows

    def step(self, step: int, batch: Any = None) -> list[dict[str, Any]] | None:
        """Call once per training step; runs :meth:`check` when the step is due, else returns None."""
        return self.check(step, batch) if self.due(step) else None

    def _judge(self, step: int, rows: list[dict[str, Any]]) -> None:
        bad = [r for r in rows if verdict(r, self.band, "ci") in (Verdict.STARVED, Verdict.FLOODED)]
        if not bad:
            return
        row = bad[0]
        reason = (f"gradflow: at step {step}, retention of {row['target']} under {row['branch']} is "
                  f"{row['retention']:.3f} (CI [{row['ci_low']:.3f}, {row['ci_high']:.3f}]), outside the band "
                  f"{self.band.describe()}")
        self.failed.append({"step": step, "reason": reason, "rows": bad})
        if self.on_fail == "stop":
            raise RetentionFailure(reason + "; training stopped (on_fail='stop').")
        if self.on_fail == "warn":
            warnings.warn(reason, RetentionWarning, stacklevel=3)

    # -- per-step gradient norms of the real training gradient --------------------------------------
    def grad_norms(self) -> dict[str, float | None]:
        """``{grad_norm/<target>/<module>: norm of .grad}`` now (after backward, before zero_grad)."""
        from .norms import combine_norms, to_floats, vector_norms

        groups = [[p.grad for p in params if p.grad is not None] for _, params in self._grad_groups]
        values = iter(to_floats(vector_norms([g for group in groups for g in group])))
        return {name: combine_norms([next(values) for _ in group])
                for (name, _), group in zip(self._grad_groups, groups, strict=True)}

    def log_grad_norms(self, step: int) -> dict[str, float | None]:
        """Log :meth:`grad_norms` (call after ``backward()``, before ``zero_grad()``)."""
        norms = self.grad_norms()
        for name, value in norms.items():
            if value is not None:
                self._log(name, value, step)
        return norms

    def _log(self, name: str, value: float, step: int) -> None:
        if self.logger is not None:
            self.logger(name, float(value), step)
