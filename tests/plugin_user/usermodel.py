"""A user's own model as a gradflow subject: a residual net with an adapter and a strong side branch."""

from __future__ import annotations

import torch
from torch import nn

import gradflow as gf


class Net(nn.Module):
    def __init__(self, width: int = 6, side_scale: float = 1.0) -> None:
        super().__init__()
        self.body = nn.Linear(width, width)
        self.side = nn.Linear(width, width)
        self.adapter = nn.Linear(width, width)
        self.head = nn.Linear(width, 1)
        self.side_scale = side_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.tanh(self.body(x))
        x = x + self.adapter(x)
        x = x + self.side_scale * self.side(x)
        return self.head(torch.tanh(x))


@gf.subject_factory
def make_subject(preset: str | None = None, seed: int = 0, overrides: dict[str, str] | None = None) -> gf.Subject:
    """``overrides``: ``side_scale`` (how strongly the side branch is added)."""
    side_scale = float((overrides or {}).get("side_scale", 1.0))
    torch.manual_seed(seed)
    model = Net(side_scale=side_scale).double()
    generator = torch.Generator().manual_seed(seed)
    data = [(torch.randn(8, 6, dtype=torch.float64, generator=generator),
             torch.randn(8, 1, dtype=torch.float64, generator=generator)) for _ in range(4)]

    def loss_fn(m: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        x, y = batch
        return (m(x) - y).pow(2).mean()

    return gf.Subject(model=model, loss_fn=loss_fn, batches=data, branches={"side": "side"},
                      targets={"adapter": "adapter"}, name="usermodel", preset=preset,
                      config={"side_scale": side_scale}, default_batches=4)
