"""diffusers UNet2DConditionModel: retention of the self-attention (``attn1``) and a resnet when the
cross-attention (``attn2``) is ablated, against an independent computation.

The reference switches cross-attention off through diffusers' own attention-processor API: a processor that
runs the usual attention (so every random number is drawn as before) and returns zeros of its shape.
"""

from __future__ import annotations

import contextlib
import functools

import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from libs.reference import assert_row_matches, reference_norms  # noqa: E402

import gradflow as gf  # noqa: E402

TOL32 = 1e-5
TARGETS = {"self_attn": "**.attn1", "resnet": "down_blocks.0.resnets.0"}
SETUPS = ["eval", "dropout", "compile", "reentrant", "checkpoint", "bf16"]


def make_unet(setup: str):
    torch.manual_seed(0)
    unet = diffusers.UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(16, 32),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=16, attention_head_dim=4, norm_num_groups=8, dropout=0.1)
    unet.train(setup in ("dropout", "reentrant", "checkpoint"))
    if setup in ("reentrant", "checkpoint"):
        func = functools.partial(torch.utils.checkpoint.checkpoint, use_reentrant=setup == "reentrant")
        unet.enable_gradient_checkpointing(gradient_checkpointing_func=lambda module, *args: func(module, *args))
    return unet


def make_batches(n: int = 3):
    generator = torch.Generator().manual_seed(2)
    return [(torch.randn(2, 4, 8, 8, generator=generator), torch.randint(0, 1000, (2,), generator=generator),
             torch.randn(2, 5, 16, generator=generator), torch.randn(2, 4, 8, 8, generator=generator))
            for _ in range(n)]


def loss_for(setup: str):
    def loss_fn(unet, batch):
        sample, timestep, context, noise = batch
        autocast = torch.autocast("cpu", dtype=torch.bfloat16) if setup == "bf16" else contextlib.nullcontext()
        with autocast:
            predicted = unet(sample, timestep, encoder_hidden_states=context).sample
        return (predicted.float() - noise).pow(2).mean()

    return loss_fn


class ZeroedProcessor:
    """Runs the wrapped attention processor, then returns zeros of its output (the branch contributes nothing)."""

    def __init__(self, inner):
        self.inner = inner

    def __call__(self, attn, hidden_states, *args, **kwargs):
        return torch.zeros_like(self.inner(attn, hidden_states, *args, **kwargs))


def cross_attention_off(unet):
    modules = [m for name, m in unet.named_modules() if name.endswith("attn2")]

    @contextlib.contextmanager
    def off():
        saved = [m.processor for m in modules]
        for module, processor in zip(modules, saved, strict=True):
            module.set_processor(ZeroedProcessor(processor))
        try:
            yield
        finally:
            for module, processor in zip(modules, saved, strict=True):
                module.set_processor(processor)

    return off


@pytest.mark.parametrize("setup", SETUPS)
def test_cross_attention_retention_matches_reference(setup):
    unet = make_unet(setup)
    loss_fn = loss_for(setup)
    batches = make_batches()
    measured = unet
    if setup == "compile":
        measured = torch.compile(unet, backend="aot_eager")
        loss_fn(measured, batches[0]).backward()  # compiled once: hooks added later would be ignored by dynamo
        unet.zero_grad(set_to_none=True)
    record = gf.compare(measured, loss_fn, batches, branches={"cross_attn": "**.attn2"}, targets=TARGETS, seed=7)
    seeds = record.data["batches"]["pass_seeds"]
    for target, selector in TARGETS.items():
        params = [p for _, p in gf.parameters_of(unet, gf.select_modules(unet, selector))]
        with_, without = reference_norms(unet, loss_fn, batches, seeds, params, cross_attention_off(unet),
                                         via_backward=setup == "reentrant")
        assert_row_matches(record, "cross_attn", target, with_, without, TOL32)
    assert record.data["branches"]["cross_attn"]["calls_per_pass"] == [1, 1]
    assert list(record.data["measurement"]["gradient_paths"]) == (["backward"] if setup == "reentrant"
                                                                  else ["autograd"])
