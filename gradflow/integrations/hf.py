"""Retention in a Hugging Face ``Trainer``: checks every N steps, logged through ``Trainer.log``.

    from gradflow.integrations.hf import attach

    attach(trainer, branches={"lora": "**.lora_B"}, targets={"classifier": "**.classifier"}, every=100,
           batches=held_out, on_fail="stop")
    trainer.train()

Metrics go through ``Trainer.log``, so they reach every ``report_to`` integration (TensorBoard writes them as
``train/retention/<branch>/<target>``). ``batches`` are held-out batches (dicts of tensors, moved to the
model's device); without them the first batches of the trainer's evaluation data are used. The default
``loss_fn`` is ``model(**batch).loss``. Under DDP every rank checks on the wrapped model (global numbers) and
the trainer logs on the main process. ``on_fail="stop"`` sets ``control.should_training_stop`` and logs the
reason.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

try:
    from transformers import TrainerCallback
except ImportError as exc:  # pragma: no cover - the optional dependency is missing
    raise ImportError("gradflow.integrations.hf needs transformers: pip install 'gradflow-diagnostics[hf]'") from exc

import torch

from ..monitor import Monitor, RetentionFailure
from ..verdicts import Band

log = logging.getLogger("gradflow")


def _default_loss(model: Any, batch: Mapping[str, Any]) -> Any:
    return model(**batch).loss


def _to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, Mapping):
        return {k: _to_device(v, device) for k, v in batch.items()}
    return batch.to(device) if isinstance(batch, torch.Tensor) else batch


class RetentionCallback(TrainerCallback):
    """A retention check every ``every`` optimizer steps (see :class:`gradflow.Monitor` for the arguments)."""

    def __init__(self, branches: Mapping[str, Any], targets: Mapping[str, Any], every: int = 100,
                 batches: Sequence[Any] | None = None, n_batches: int = 4, band: Band | None = None,
                 on_fail: str = "warn", loss_fn: Callable[[Any, Any], Any] | None = None, modules: bool = False,
                 trainer: Any = None, seed: int = 0) -> None:
        self.branches, self.targets, self.every = dict(branches), dict(targets), every
        self.batches, self.n_batches, self.band, self.on_fail = batches, n_batches, band, on_fail
        self.loss_fn, self.modules, self.trainer, self.seed = loss_fn or _default_loss, modules, trainer, seed
        self.monitor: Monitor | None = None
        self.stopped_reason: str | None = None

    def _held_out(self, model: Any, eval_dataloader: Any) -> list[Any]:
        device = next(model.parameters()).device
        if self.batches is not None:
            return [_to_device(b, device) for b in self.batches]
        if eval_dataloader is None:
            raise ValueError("gradflow RetentionCallback needs held-out batches: pass batches=, or give the Trainer "
                             "an eval_dataset.")
        taken = []
        for batch in eval_dataloader:
            taken.append(_to_device(batch, device))
            if len(taken) == self.n_batches:
                break
        return taken

    def _model(self, model: Any) -> Any:
        wrapped = getattr(self.trainer, "model_wrapped", None)
        ddp = getattr(torch.nn.parallel, "DistributedDataParallel", None)
        return wrapped if ddp is not None and isinstance(wrapped, ddp) else model

    def on_step_end(self, args: Any, state: Any, control: Any, model: Any = None, eval_dataloader: Any = None,
                    **kwargs: Any) -> Any:
        """After the optimizer step of a due step: the check on the new weights."""
        step = state.global_step
        if step == 0 or step % self.every:
            return control
        if self.monitor is None:
            self.monitor = Monitor(self._model(model), self.loss_fn, branches=self.branches, targets=self.targets,
                                   every=self.every, batches=self._held_out(model, eval_dataloader), band=self.band,
                                   on_fail="stop" if self.on_fail == "stop" else self.on_fail, modules=self.modules,
                                   seed=self.seed)
        logs: dict[str, float] = {}
        self.monitor.logger = lambda name, value, _step: logs.__setitem__(name, value)
        try:
            self.monitor.check(step)
        except RetentionFailure as exc:
            self.stopped_reason = str(exc)
            log.warning(str(exc))
            control.should_training_stop = True
        if logs and self.trainer is not None:
            self.trainer.log(logs)
        return control


def attach(trainer: Any, branches: Mapping[str, Any], targets: Mapping[str, Any], **kwargs: Any) -> RetentionCallback:
    """Create a :class:`RetentionCallback` bound to ``trainer`` (so it can log) and add it to the trainer."""
    callback = RetentionCallback(branches, targets, trainer=trainer, **kwargs)
    trainer.add_callback(callback)
    return callback
