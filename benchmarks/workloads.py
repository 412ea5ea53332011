"""The training-step variants being compared: plain, gradflow probes, and the two usual alternatives."""

from __future__ import annotations

from collections.abc import Callable

import torch

import gradflow as gf
from gradflow.subject import Subject

VISUAL_BLOCKS = "clip.visual.transformer.resblocks.*"


def trainable(subject: Subject) -> list[tuple[str, torch.nn.Parameter]]:
    return [(n, p) for n, p in subject.model.named_parameters() if p.requires_grad]


def adapter_selector(subject: Subject) -> list:
    """Every trainable module of the AA-CLIP stage-2 subject: adapters, projections, cross-attention."""
    return [*subject.target("image_adapter").selector, "image_cross_attn"]


def make_steps(subject: Subject, batch) -> dict[str, Callable[[], None]]:
    """One optimizer step per call for each variant, all on the same model, batch and optimizer."""
    params = [p for _, p in trainable(subject)]
    optimizer = torch.optim.Adam(params, lr=1e-9, betas=(0.5, 0.999))  # tiny lr: weights barely move
    model, loss_fn = subject.model, subject.loss_fn
    adapters = adapter_selector(subject)

    def plain() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss_fn(model, batch).backward()
        optimizer.step()

    def gradflow_probe() -> None:
        optimizer.zero_grad(set_to_none=True)
        with gf.probe(model, adapters, outputs=False) as p, gf.probe(model, VISUAL_BLOCKS, params=False) as q:
            loss_fn(model, batch).backward()
        p.norms(), q.output_norms()  # read back every step, as a logger would
        optimizer.step()

    named = trainable(subject)

    def norm_loop() -> None:  # plot_grad_flow / Lightning style
        optimizer.zero_grad(set_to_none=True)
        loss_fn(model, batch).backward()
        {n: p.grad.norm().item() for n, p in named if p.grad is not None}
        optimizer.step()

    def histograms() -> None:  # wandb.watch(log="gradients") style: 64-bin histogram per parameter
        optimizer.zero_grad(set_to_none=True)
        loss_fn(model, batch).backward()
        for _, p in named:
            if p.grad is None:
                continue
            grad = p.grad.detach().float()
            low, high = grad.min().item(), grad.max().item()
            torch.histc(grad, bins=64, min=low, max=high).tolist()
        optimizer.step()

    return {"plain": plain, "gradflow": gradflow_probe, "norm_loop": norm_loop, "histogram": histograms}


def plain_pass(subject: Subject, batch) -> Callable[[], None]:
    """Forward + backward without gradflow (the unit of the compare floor)."""
    def run() -> None:
        subject.model.zero_grad(set_to_none=True)
        subject.loss_fn(subject.model, batch).backward()
        subject.model.zero_grad(set_to_none=True)
    return run
