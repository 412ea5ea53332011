"""Hand-built float64 models with their own on/off switches, for independent reference computations.

Each branch can be turned off by the model itself (``enabled = False``) the way the original authors
would: the branch still runs (so dropout consumes the same random numbers) but contributes zeros.
Reference gradients come from plain ``torch.autograd.grad``; nothing here uses gradflow.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class Switchable(nn.Module):
    """Residual branch ``x + f(x)`` whose contribution the model can switch off or scale itself."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.enabled = True
        self.factor = 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.inner(x)
        if isinstance(out, tuple):
            out = out[0]
        if not self.enabled:
            out = torch.zeros_like(out)
        return x + self.factor * out


class TupleBranch(nn.Module):
    """Returns (out, aux) like many attention modules."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.proj(x)
        return out, out.sum(-1)


class AttnBranch(nn.Module):
    """Self-attention through nn.MultiheadAttention (tuple output)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(width, num_heads=2, batch_first=True, dropout=0.0)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self.attn(x, x, x, need_weights=False)


class Block(nn.Module):
    """body -> in-place ReLU -> switchable branch -> dropout -> adapter (residual)."""

    def __init__(self, width: int, branch: str, dropout: float) -> None:
        super().__init__()
        self.body = nn.Linear(width, width)
        inner = {"linear": nn.Linear(width, width), "tuple": TupleBranch(width), "mha": AttnBranch(width)}[branch]
        self.cross = Switchable(inner)
        self.drop = nn.Dropout(dropout)
        self.adapter = nn.Linear(width, width)
        self.output_probe: torch.Tensor | None = None  # optional zero tensor added to body's output

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.body(x)
        if self.output_probe is not None:
            h = h + self.output_probe
        h = torch.relu_(h)  # in-place op right after the probed module
        h = self.cross(h)
        h = self.drop(h)
        return h + 0.5 * self.adapter(h)


class Net(nn.Module):
    """A stack of blocks; ``head`` shares its weight with ``tail`` (tied weights)."""

    def __init__(self, width: int = 6, depth: int = 3, branch: str = "linear", dropout: float = 0.0) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(Block(width, branch, dropout) for _ in range(depth))
        self.head = nn.Linear(width, width, bias=False)
        self.tail = nn.Linear(width, width, bias=False)
        self.tail.weight = self.head.weight
        self.out = nn.Linear(width, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        x = self.tail(torch.tanh(self.head(x)))
        return self.out(x)

    def set_cross(self, enabled: bool = True, factor: float = 1.0) -> None:
        for block in self.blocks:
            block.cross.enabled = enabled
            block.cross.factor = factor


def make_net(seed: int = 0, **kwargs) -> Net:
    torch.manual_seed(seed)
    return Net(**kwargs).double()


def make_batches(n: int, width: int = 6, seq: int = 0, seed: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    shape = (4, seq, width) if seq else (4, width)
    out_shape = (4, seq, 1) if seq else (4, 1)
    return [(torch.randn(*shape, dtype=torch.float64, generator=generator),
             torch.randn(*out_shape, dtype=torch.float64, generator=generator)) for _ in range(n)]


def mse(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    x, y = batch
    return (model(x) - y).pow(2).mean()


def grad_norm(loss: torch.Tensor, params: list[torch.Tensor]) -> float | None:
    """L2 norm over the gradients of ``params`` (None when none is reachable)."""
    grads = torch.autograd.grad(loss, params, allow_unused=True, retain_graph=True)
    present = [g for g in grads if g is not None]
    if not present:
        return None
    return math.sqrt(sum(float(g.pow(2).sum()) for g in present))


def reference_norm(model: Net, batch, params, seed: int, enabled: bool = True, factor: float = 1.0) -> float | None:
    """‖∇params loss‖ with the model's own switch, from RNG seed ``seed`` (as the pass uses)."""
    model.set_cross(enabled, factor)
    try:
        torch.manual_seed(seed)
        return grad_norm(mse(model, batch), params)
    finally:
        model.set_cross(True, 1.0)


def norm_of(grads) -> float | None:
    """L2 norm over gradient tensors, accumulated in float64 (None when there is none)."""
    present = [g for g in grads if g is not None]
    return math.sqrt(math.fsum(float(g.double().pow(2).sum()) for g in present)) if present else None


def rel_err(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-300)


class SparseEmbeddingNet(nn.Module):
    """Token ids -> a sparse-gradient embedding (``nn.Embedding(sparse=True)``) with two linear branches."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.emb, self.a, self.b = nn.Embedding(1000, 8, sparse=True), nn.Linear(8, 8), nn.Linear(8, 8)
        self.head = nn.Linear(8, 1)
        self.double()

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        e = self.emb(ids)
        return self.head(e + self.a(e) + self.b(e) ** 2).mean()


#: Token ids with repeats (one sparse COO gradient row per occurrence until coalesced), 4 per rank of 2.
SPARSE_IDS = torch.tensor([1, 2, 2, 5, 1, 7, 2, 9])


def sparse_loss(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    return model(ids)

