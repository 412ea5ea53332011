"""PyTorch Lightning: the RetentionCallback logs to TensorBoard what gf.compare gives by hand on the same
weights and batches; on_fail="stop" stops the fit at the first failing check, with the reason in the log."""

from __future__ import annotations

import logging

import pytest
import torch

L = pytest.importorskip("lightning")
pytest.importorskip("tensorboard")

from reference_models import make_batches, make_net, mse, rel_err  # noqa: E402
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

import gradflow as gf  # noqa: E402
from gradflow.integrations.lightning import RetentionCallback  # noqa: E402

BRANCHES = {"cross": "net.blocks.*.cross.inner"}
TARGETS = {"adapter": "net.blocks.*.adapter"}


class Module(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = make_net(dropout=0.1)

    def loss(self, batch):
        return mse(self.net, batch)

    def training_step(self, batch, batch_idx):
        loss = self.loss(batch)
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


class Snapshots(L.Callback):
    """Keeps the weights at every step's end (the check runs on exactly these)."""

    def __init__(self) -> None:
        self.weights: dict[int, dict[str, torch.Tensor]] = {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.weights[trainer.global_step] = {n: t.detach().clone() for n, t in pl_module.state_dict().items()}


def fit(tmp_path, callback, steps=6):
    torch.manual_seed(0)
    module = Module()
    snapshots = Snapshots()
    loader = torch.utils.data.DataLoader(make_batches(8), batch_size=None, shuffle=False)
    trainer = L.Trainer(max_steps=steps, logger=L.pytorch.loggers.TensorBoardLogger(tmp_path, name="run"),
                        callbacks=[snapshots, callback], enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, log_every_n_steps=1, accelerator="cpu", devices=1)
    trainer.fit(module, loader)
    return trainer, module, snapshots


def scalars(tmp_path, tag):
    events = next(tmp_path.rglob("events.out.tfevents.*"))
    accumulator = EventAccumulator(str(events))
    accumulator.Reload()
    return {event.step: event.value for event in accumulator.Scalars(tag)}


def test_logged_retention_equals_compare_by_hand(tmp_path):
    held_out = make_batches(3, seed=5)
    callback = RetentionCallback(lambda m, b: m.loss(b), BRANCHES, TARGETS, every_n_steps=3, batches=held_out,
                                 log_grad_norms=True)
    _, module, snapshots = fit(tmp_path, callback)
    logged = scalars(tmp_path, "retention/cross/adapter")
    assert sorted(logged) == [3, 6]  # once per check, at the trainer's global step
    for step in (3, 6):
        reference = Module()
        reference.load_state_dict(snapshots.weights[step], strict=True)
        expected = gf.compare(reference, lambda m, b: m.loss(b), held_out, branches=BRANCHES,
                              targets=TARGETS).retention("cross", "adapter")
        assert rel_err(logged[step], expected) < 1e-6, (step, logged[step], expected)
    assert scalars(tmp_path, "grad_norm/adapter/net.blocks.0.adapter")


def test_on_fail_stop_stops_at_the_first_failing_check(tmp_path, caplog):
    callback = RetentionCallback(lambda m, b: m.loss(b), BRANCHES, TARGETS, every_n_steps=2,
                                 batches=make_batches(3, seed=5), band=gf.Band(100.0), on_fail="stop")
    with caplog.at_level(logging.WARNING, logger="gradflow"):
        trainer, _, _ = fit(tmp_path, callback, steps=10)
    assert trainer.global_step == 2
    assert callback.stopped_reason and "outside the band" in callback.stopped_reason
    assert any("outside the band" in r.getMessage() for r in caplog.records)
