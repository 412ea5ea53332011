"""transformers BERT + peft LoRA: gradflow against an independent computation, in every setup users train in.

LoRA's branch is switched off in the reference with peft's own ``scale_layer(0)``; gradflow zero-ablates the
selected modules with hooks. Selectors ``**.lora_B`` and ``**.lora_A`` match peft's ``ModuleDict``
containers (never called), which gradflow resolves to the ``Linear`` inside them.
"""

from __future__ import annotations

import contextlib

import pytest
import torch

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

from libs.reference import assert_row_matches, reference_norms  # noqa: E402

import gradflow as gf  # noqa: E402

TOL32 = 1e-5
TARGETS = {"classifier": "**.classifier", "base_ffn": "**.encoder.layer.1.output.dense"}
SETUPS = ["eval", "dropout", "compile", "reentrant", "checkpoint", "bf16"]


def make_model(setup: str):
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=64, max_position_embeddings=32, num_labels=3)
    base = transformers.BertForSequenceClassification(config)
    lora = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value"], lora_dropout=0.0,
                           init_lora_weights=False)  # non-zero lora_B: the branch really contributes
    model = peft.get_peft_model(base, lora)
    for name, param in model.named_parameters():  # targets in the base model, unfrozen after peft froze them
        if ".classifier." in name or ".encoder.layer.1.output.dense." in name:
            param.requires_grad_(True)
    model.train(setup in ("dropout", "reentrant", "checkpoint"))
    if setup in ("reentrant", "checkpoint"):
        inner = model.base_model.model  # transformers 5 renamed the method; 4.x has only the old name
        kwargs = {"use_reentrant": setup == "reentrant"}
        if hasattr(inner, "activation_checkpointing_enable"):
            inner.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            inner.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        model.base_model.model.enable_input_require_grads()  # as peft users do, so layer 0 keeps its graph
    return model


def make_batches(n: int = 3):
    generator = torch.Generator().manual_seed(1)
    return [(torch.randint(0, 120, (4, 12), generator=generator), torch.randint(0, 3, (4,), generator=generator))
            for _ in range(n)]


def loss_for(setup: str):
    def loss_fn(model, batch):
        ids, labels = batch
        context = torch.autocast("cpu", dtype=torch.bfloat16) if setup == "bf16" else contextlib.nullcontext()
        with context:
            return model(input_ids=ids, labels=labels).loss

    return loss_fn


def lora_off(model):
    layers = [m for m in model.modules() if isinstance(m, peft.tuners.lora.LoraLayer)]

    @contextlib.contextmanager
    def off():
        for layer in layers:
            layer.scale_layer(0.0)
        try:
            yield
        finally:
            for layer in layers:
                layer.unscale_layer()

    return off


@pytest.mark.parametrize("setup", SETUPS)
@pytest.mark.parametrize("selector", ["**.lora_B", "**.lora_B.default", "**.lora_A"])
def test_lora_retention_matches_reference(setup, selector):
    if setup == "compile" and selector != "**.lora_B":
        pytest.skip("one selector is enough under compile (the compile step dominates the time)")
    model = make_model(setup)
    loss_fn = loss_for(setup)
    batches = make_batches()
    measured = model
    if setup == "compile":
        measured = torch.compile(model, backend="aot_eager")
        loss_fn(measured, batches[0]).backward()  # compiled once, as in training: later hooks would be ignored
        model.zero_grad(set_to_none=True)
    record = gf.compare(measured, loss_fn, batches, branches={"lora": selector}, targets=TARGETS, seed=5)
    seeds = record.data["batches"]["pass_seeds"]
    for target in TARGETS:
        params = [p for _, p in gf.parameters_of(model, gf.select_modules(model, TARGETS[target]))]
        with_, without = reference_norms(model, loss_fn, batches, seeds, params, lora_off(model),
                                         via_backward=setup == "reentrant")
        assert_row_matches(record, "lora", target, with_, without, TOL32)
    paths = record.data["measurement"]["gradient_paths"]
    assert list(paths) == (["backward"] if setup == "reentrant" else ["autograd"])
    if setup == "compile":
        assert any("torch.compile" in note for note in record.data["measurement"]["notes"])
    if selector != "**.lora_B.default":
        assert record.data["branches"]["lora"]["modules"][0].endswith(selector[-6:] + ".default")


def test_lora_selector_with_compile_prefix_is_accepted():
    model = make_model("eval")
    compiled = torch.compile(model, backend="aot_eager")
    record = gf.compare(compiled, loss_for("eval"), make_batches(1), branches={"lora": "_orig_mod.**.lora_B"},
                        targets={"classifier": "_orig_mod.**.classifier"})
    assert record.rows[0]["status"] == "ok"
    assert not any("_orig_mod" in m for m in record.data["branches"]["lora"]["modules"])
