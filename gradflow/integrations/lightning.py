"""Retention in a PyTorch Lightning ``Trainer.fit``: checks every N steps, logged with ``LightningModule.log``.

    from gradflow.integrations.lightning import RetentionCallback

    callback = RetentionCallback(loss_fn=lambda m, b: m.loss(b), branches={"cross": "blocks.*.cross"},
                                 targets={"adapter": "blocks.*.adapter"}, every_n_steps=100, batches=held_out,
                                 on_fail="stop")
    trainer = L.Trainer(callbacks=[callback])

Metrics: ``retention/<branch>/<target>`` (and ``/<module>`` with ``modules=True``), and with
``log_grad_norms=True`` the per-module norms of the real ``.grad`` as ``grad_norm/<target>/<module>``, written
like Lightning's ``LearningRateMonitor`` does to every logger the trainer has (TensorBoard, CSV, W&B) at the
trainer's global step. Under DDP/FSDP2 every rank takes part in the
check (it communicates) and the global numbers are logged once (rank zero). ``on_fail="stop"`` sets
``trainer.should_stop`` at the first check outside the band and logs the reason.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

try:
    from lightning.pytorch.callbacks import Callback
except ImportError:  # pragma: no cover - the standalone package name of older installs
    try:
        from pytorch_lightning.callbacks import Callback  # type: ignore[no-redef]
    except ImportError as exc:
        raise ImportError("gradflow.integrations.lightning needs PyTorch Lightning: pip install "
                          "'gradflow-diagnostics[lightning]'") from exc

from ..monitor import Monitor, RetentionFailure
from ..verdicts import Band

log = logging.getLogger("gradflow")


def _global_model(trainer: Any, module: Any) -> Any:
    """The model the check runs on: the DDP/FSDP wrapper when there is one (global numbers), else the module."""
    strategy_model = getattr(getattr(trainer, "strategy", None), "model", None)
    return strategy_model if strategy_model is not None and strategy_model is not module else module


class RetentionCallback(Callback):
    """A retention check every ``every_n_steps`` optimizer steps (see :class:`gradflow.Monitor` for the args).

    ``batches``: held-out batches for the checks (default: the batch just trained on). ``loss_fn(module,
    batch)`` computes the loss the check differentiates (it should not call ``self.log``).
    """

    def __init__(self, loss_fn: Callable[[Any, Any], Any], branches: Mapping[str, Any], targets: Mapping[str, Any],
                 every_n_steps: int = 100, batches: Sequence[Any] | None = None, band: Band | None = None,
                 on_fail: str = "warn", modules: bool = False, log_grad_norms: bool = False, seed: int = 0) -> None:
        super().__init__()
        self.loss_fn, self.branches, self.targets = loss_fn, dict(branches), dict(targets)
        self.every, self.batches, self.band, self.on_fail = every_n_steps, batches, band, on_fail
        self.modules, self.grad_norms, self.seed = modules, log_grad_norms, seed
        self.monitor: Monitor | None = None
        self.stopped_reason: str | None = None

    def _monitor(self, trainer: Any, pl_module: Any) -> Monitor:
        if self.monitor is None:
            def logger(name: str, value: float, step: int) -> None:
                # Like Lightning's LearningRateMonitor: straight to the trainer's loggers at this step, once.
                if trainer.is_global_zero:
                    for sink in trainer.loggers:
                        sink.log_metrics({name: value}, step=step)

            self.monitor = Monitor(_global_model(trainer, pl_module), self.loss_fn, branches=self.branches,
                                   targets=self.targets, every=self.every, batches=self.batches, band=self.band,
                                   on_fail="stop" if self.on_fail == "stop" else self.on_fail, logger=logger,
                                   modules=self.modules, seed=self.seed)
        return self.monitor

    def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
        """Per-module norms of the gradient the optimizer is about to use (no extra pass)."""
        if self.grad_norms:
            self._monitor(trainer, pl_module).log_grad_norms(trainer.global_step)

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        """After the optimizer step of a due step: the check on the new weights."""
        step = trainer.global_step
        if step == 0 or step % self.every:
            return
        try:
            self._monitor(trainer, pl_module).check(step, batch)
        except RetentionFailure as exc:
            self.stopped_reason = str(exc)
            log.warning(str(exc))
            trainer.should_stop = True
