"""Hugging Face Trainer + peft LoRA: the RetentionCallback logs (through Trainer.log, to TensorBoard) what
gf.compare gives by hand on the same weights and batches; on_fail="stop" stops training with the reason."""

from __future__ import annotations

import logging

import pytest
import torch

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")
pytest.importorskip("tensorboard")

from reference_models import rel_err  # noqa: E402
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

import gradflow as gf  # noqa: E402
from gradflow.integrations.hf import attach  # noqa: E402

BRANCHES = {"lora": "**.lora_B"}
TARGETS = {"classifier": "**.classifier"}


def make_model():
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=64, max_position_embeddings=32, num_labels=3)
    model = peft.get_peft_model(transformers.BertForSequenceClassification(config),
                                peft.LoraConfig(r=4, target_modules=["query", "value"], init_lora_weights=False))
    for name, param in model.named_parameters():
        if ".classifier." in name:
            param.requires_grad_(True)
    return model


def examples(n, seed):
    generator = torch.Generator().manual_seed(seed)
    return [{"input_ids": torch.randint(0, 120, (12,), generator=generator),
             "labels": torch.randint(0, 3, (), generator=generator)} for _ in range(n)]


def batched(items, size=4):
    return [{k: torch.stack([x[k] for x in items[i:i + size]]) for k in items[0]} for i in range(0, len(items), size)]


class Snapshots(transformers.TrainerCallback):
    def __init__(self):
        self.weights = {}

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self.weights[state.global_step] = {k: v.detach().clone() for k, v in model.state_dict().items()}


def train(tmp_path, steps=4, **kwargs):
    import inspect

    model = make_model()
    snapshots = Snapshots()
    options = {"output_dir": str(tmp_path / "out"), "report_to": ["tensorboard"], "max_steps": steps,
               "per_device_train_batch_size": 4, "learning_rate": 1e-2, "logging_steps": 1, "save_strategy": "no",
               "use_cpu": True, "disable_tqdm": True, "seed": 0, "remove_unused_columns": False}
    if "logging_dir" in inspect.signature(transformers.TrainingArguments).parameters:  # transformers 4.x
        options["logging_dir"] = str(tmp_path / "out" / "runs")
    args = transformers.TrainingArguments(**options)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=examples(32, 1), callbacks=[snapshots])
    callback = attach(trainer, BRANCHES, TARGETS, **kwargs)
    trainer.train()
    return trainer, callback, snapshots


def test_logged_retention_equals_compare_by_hand(tmp_path):
    held_out = batched(examples(8, 7))
    _, _, snapshots = train(tmp_path, every=2, batches=held_out)
    events = next((tmp_path / "out").rglob("events.out.tfevents.*"))
    accumulator = EventAccumulator(str(events))
    accumulator.Reload()
    logged = {e.step: e.value for e in accumulator.Scalars("train/retention/lora/classifier")}
    assert sorted(logged) == [2, 4]
    for step, value in logged.items():
        reference = make_model()
        reference.load_state_dict(snapshots.weights[step])
        reference.train()  # the Trainer trains in train mode: dropout as in the check
        expected = gf.compare(reference, lambda m, b: m(**b).loss, held_out, branches=BRANCHES,
                              targets=TARGETS).retention("lora", "classifier")
        assert rel_err(value, expected) < 1e-6, (step, value, expected)


def test_on_fail_stop(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="gradflow"):
        trainer, callback, _ = train(tmp_path, steps=10, every=2, batches=batched(examples(8, 7)),
                                     band=gf.Band(100.0), on_fail="stop")
    assert trainer.state.global_step == 2
    assert "outside the band" in callback.stopped_reason
    assert any("outside the band" in r.getMessage() for r in caplog.records)
