"""AA-CLIP adapter modules.

* :class:`SimpleAdapter` — bias-free Linear followed by LeakyReLU(0.01); no bottleneck, no LayerNorm.
* :class:`SimpleProj` — bias-free Linear, LeakyReLU only when ``relu=True``.
* :class:`ResidualAdapter` — a SimpleAdapter used as AA-CLIP's "residual adapter" update. Its forward
  returns exactly the *change* it makes to the hidden sequence, so the model does ``x = x + adapter(x)``
  and a gradflow zero-ablation of the module switches the adapter off exactly.

The AA-CLIP update of a hidden sequence ``x`` (every token, CLS and padding included) is::

    a = LeakyReLU(W x)                       # per token
    a = a * ||x|| / ||a||                    # per-token L2 norm matching, no epsilon (as upstream)
    x_new = w * a + (1 - w) * x              # convex mix, w = 0.1

which we write as ``x_new = x + w * (a - x)``; the module output is ``w * (a - x)``.
"""

from __future__ import annotations

import torch
from torch import nn


class SimpleAdapter(nn.Module):
    """Linear(c_in -> c_out, bias=False) + LeakyReLU(0.01)."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.linear = nn.Linear(c_in, c_out, bias=False)
        self.act = nn.LeakyReLU(0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Per-token adapter output ``LeakyReLU(W x)``."""
        return self.act(self.linear(x))


class SimpleProj(nn.Module):
    """Linear(c_in -> c_out, bias=False), optionally followed by LeakyReLU(0.01)."""

    def __init__(self, c_in: int, c_out: int, relu: bool = False) -> None:
        super().__init__()
        self.linear = nn.Linear(c_in, c_out, bias=False)
        self.act: nn.Module = nn.LeakyReLU(0.01) if relu else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Projected tokens."""
        return self.act(self.linear(x))


class ResidualAdapter(SimpleAdapter):
    """A :class:`SimpleAdapter` whose forward is AA-CLIP's residual update, returned as a delta.

    ``forward(x) = weight * (a * ||x|| / ||a|| - x)`` with ``a = LeakyReLU(W x)``; the caller adds it to
    ``x``. Zeroing the output leaves ``x`` unchanged, i.e. it removes the adapter.
    """

    def __init__(self, dim: int, weight: float = 0.1) -> None:
        super().__init__(dim, dim)
        self.weight = float(weight)

    def adapt(self, x: torch.Tensor) -> torch.Tensor:
        """The norm-matched adapter output ``a * ||x|| / ||a||`` (per token)."""
        a = super().forward(x)
        return a * (x.norm(dim=-1, keepdim=True) / a.norm(dim=-1, keepdim=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The change ``weight * (adapt(x) - x)`` to add to the hidden sequence."""
        return self.weight * (self.adapt(x) - x)

    def extra_repr(self) -> str:
        return f"weight={self.weight}"


def xavier_init_(module: nn.Module) -> None:
    """AA-CLIP init: ``xavier_uniform_`` on every parameter with more than one dimension."""
    for param in module.parameters():
        if param.dim() > 1:
            nn.init.xavier_uniform_(param)
