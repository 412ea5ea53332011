"""timm ViT with user-added adapters: retention of the classifier head and an unfrozen MLP when the adapters
are ablated, against the user's own switch (the adapter still runs and contributes zeros)."""

from __future__ import annotations

import contextlib

import pytest
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

timm = pytest.importorskip("timm")

from libs.reference import assert_row_matches, reference_norms  # noqa: E402

import gradflow as gf  # noqa: E402

TOL32 = 1e-5
TARGETS = {"head": "head", "mlp": "blocks.1.block.mlp"}
SETUPS = ["eval", "dropout", "compile", "reentrant", "checkpoint", "bf16"]


class Adapter(nn.Module):
    """Bottleneck adapter returning the change it makes; the user's switch zeroes it while it still runs."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.down = nn.Linear(dim, 8)
        self.up = nn.Linear(8, dim)
        self.drop = nn.Dropout(0.2)
        self.enabled = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.up(self.drop(torch.nn.functional.gelu(self.down(x))))
        return out if self.enabled else torch.zeros_like(out)


class AdaptedBlock(nn.Module):
    """A timm block followed by a residual adapter; optionally activation-checkpointed."""

    def __init__(self, block: nn.Module, dim: int, use_reentrant: bool | None) -> None:
        super().__init__()
        self.block = block
        self.adapter = Adapter(dim)
        self.use_reentrant = use_reentrant

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block(x)
        return x + self.adapter(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_reentrant is None or not torch.is_grad_enabled():
            return self._run(x)
        return checkpoint(self._run, x, use_reentrant=self.use_reentrant)


def make_vit(setup: str):
    torch.manual_seed(0)
    vit = timm.models.vision_transformer.VisionTransformer(
        img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=5, drop_rate=0.1,
        proj_drop_rate=0.1, attn_drop_rate=0.1)
    vit.requires_grad_(False)
    reentrant = {"reentrant": True, "checkpoint": False}.get(setup)
    vit.blocks = nn.Sequential(*[AdaptedBlock(b, 32, reentrant) for b in vit.blocks])
    vit.head.requires_grad_(True)
    vit.blocks[1].block.mlp.requires_grad_(True)
    vit.pos_embed.requires_grad_(True)  # else reentrant checkpointing passes no gradient into the blocks at all
    vit.train(setup in ("dropout", "reentrant", "checkpoint"))
    return vit


def make_batches(n: int = 3):
    generator = torch.Generator().manual_seed(3)
    return [(torch.randn(4, 3, 32, 32, generator=generator), torch.randint(0, 5, (4,), generator=generator))
            for _ in range(n)]


def loss_for(setup: str):
    def loss_fn(model, batch):
        images, labels = batch
        autocast = torch.autocast("cpu", dtype=torch.bfloat16) if setup == "bf16" else contextlib.nullcontext()
        with autocast:
            logits = model(images)
        return nn.functional.cross_entropy(logits.float(), labels)

    return loss_fn


def adapters_off(vit):
    @contextlib.contextmanager
    def off():
        for block in vit.blocks:
            block.adapter.enabled = False
        try:
            yield
        finally:
            for block in vit.blocks:
                block.adapter.enabled = True

    return off


@pytest.mark.parametrize("setup", SETUPS)
def test_adapter_retention_matches_reference(setup):
    vit = make_vit(setup)
    loss_fn = loss_for(setup)
    batches = make_batches()
    measured = vit
    if setup == "compile":
        measured = torch.compile(vit, backend="aot_eager")
        loss_fn(measured, batches[0]).backward()
        vit.zero_grad(set_to_none=True)
    record = gf.compare(measured, loss_fn, batches, branches={"adapters": "blocks.*.adapter"}, targets=TARGETS,
                        seed=11)
    seeds = record.data["batches"]["pass_seeds"]
    for target, selector in TARGETS.items():
        params = [p for _, p in gf.parameters_of(vit, gf.select_modules(vit, selector))]
        with_, without = reference_norms(vit, loss_fn, batches, seeds, params, adapters_off(vit),
                                         via_backward=setup == "reentrant")
        assert_row_matches(record, "adapters", target, with_, without, TOL32)
    assert list(record.data["measurement"]["gradient_paths"]) == (["backward"] if setup == "reentrant"
                                                                  else ["autograd"])


def test_compiled_blocks_inside_an_eager_model_are_measured_eagerly():
    vit = make_vit("eval")
    for block in vit.blocks:
        block.compile(backend="aot_eager")  # nn.Module.compile(): compiled call, no wrapper, same names
    loss_fn = loss_for("eval")
    batches = make_batches(2)
    loss_fn(vit, batches[0]).backward()
    vit.zero_grad(set_to_none=True)
    record = gf.compare(vit, loss_fn, batches, branches={"adapters": "blocks.*.adapter"}, targets=TARGETS)
    seeds = record.data["batches"]["pass_seeds"]
    params = [p for _, p in gf.parameters_of(vit, gf.select_modules(vit, "head"))]
    with torch.compiler.set_stance("force_eager"):
        with_, without = reference_norms(vit, loss_fn, batches, seeds, params, adapters_off(vit))
    assert_row_matches(record, "adapters", "head", with_, without, TOL32)
    assert any("blocks.0" in note for note in record.data["measurement"]["notes"])


def test_reentrant_region_without_grad_inputs_is_no_grad_with_the_reason():
    """The classic use_reentrant=True trap: nothing entering the region requires grad, so torch gives the
    parameters inside no gradient at all. gradflow agrees with .backward() and says why."""
    vit = make_vit("reentrant")
    vit.pos_embed.requires_grad_(False)
    loss_fn = loss_for("reentrant")
    batches = make_batches(2)
    record = gf.compare(vit, loss_fn, batches, branches={"adapters": "blocks.*.adapter"}, targets=TARGETS)
    seeds = record.data["batches"]["pass_seeds"]
    params = [p for _, p in gf.parameters_of(vit, gf.select_modules(vit, "blocks.1.block.mlp"))]
    with_, without = reference_norms(vit, loss_fn, batches, seeds, params, adapters_off(vit), via_backward=True)
    assert with_ == [None, None] and without == [None, None]
    row = next(r for r in record.rows if r["target"] == "mlp" and r["module"] == "*")
    assert row["status"] == "no_grad" and row["retention"] is None
    assert "use_reentrant" in row["note"]
