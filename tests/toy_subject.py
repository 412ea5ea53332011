"""A small residual model with adapters and a cross branch, used as a user subject in CLI tests."""

from __future__ import annotations

import torch
from torch import nn

import gradflow as gf


class Block(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.body = nn.Linear(width, width)
        self.cross = nn.Linear(width, width)
        self.adapter = nn.Linear(width, width)
        self.drop = nn.Dropout(0.2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.tanh(self.body(x))
        x = x + self.drop(self.cross(x))
        return x + self.adapter(x)


class Toy(nn.Module):
    def __init__(self, width: int = 8, depth: int = 3) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(Block(width) for _ in range(depth))
        self.head = nn.Linear(width, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.head(x)


@gf.subject_factory
def make_subject(preset: str | None = None, seed: int = 0, overrides: dict[str, str] | None = None) -> gf.Subject:
    """Toy subject; ``overrides`` may set ``depth`` and ``width``."""
    overrides = dict(overrides or {})
    known = {"depth", "width"}
    if set(overrides) - known:
        raise gf.SubjectError(f"unknown toy override(s) {sorted(set(overrides) - known)}; known: {sorted(known)}")
    torch.manual_seed(seed)
    model = Toy(int(overrides.get("width", 8)), int(overrides.get("depth", 3))).double().train()
    generator = torch.Generator().manual_seed(seed)
    data = [(torch.randn(6, model.head.in_features, dtype=torch.float64, generator=generator),
             torch.randn(6, 1, dtype=torch.float64, generator=generator)) for _ in range(6)]

    def loss_fn(m: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        x, y = batch
        return (m(x) - y).pow(2).mean()

    return gf.Subject(model=model, loss_fn=loss_fn, batches=data, name="toy", preset=preset,
                      branches={"cross": "blocks.*.cross"},
                      targets={"adapter": "blocks.*.adapter", "head": "head"},
                      default_batches=4, config={"width": model.head.in_features, "depth": len(model.blocks)})
