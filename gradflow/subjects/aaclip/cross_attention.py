"""The two cross-attention branches of the wei-paul AA-CLIP fork, each as ONE residual module.

Each module's forward returns exactly the residual contribution the model adds
(``x = x + branch(x, context)``), after norm matching and scaling. A gradflow ablation that zeroes the
module output therefore equals switching the branch off, and scaling the output by ``s`` equals
multiplying the branch weight by ``s``.

Variants (``AAClipConfig.version``):

* ``v1`` — the first fork version: raw text context, no norm matching, scale 1.0 (full-scale add). This
  is the configuration that starved the stage-2 image adapter (gradient retention 0.37).
* ``v2`` — the current fork code: the stage-2 text context L2-normalised per token, both outputs rescaled
  per token to the norm of the hidden state (``out * ||x|| / (||out|| + 1e-6)``), then scaled by 0.1.
  (The stage-1 image context is built from unit-norm features in both versions and is not renormalised.)

Module layout: q/k/v/out projections are ``nn.Linear`` with bias (xavier-uniform weights, zero bias),
``heads`` heads, softmax(q k^T / sqrt(d)) with dropout on the attention weights. Dropout is inactive in
eval mode, which is how the subject runs.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class _ResidualCrossAttention(nn.Module):
    """Multi-head cross-attention from hidden states (queries) to a context (keys/values)."""

    def __init__(
        self,
        query_dim: int,
        context_dim: int,
        attn_dim: int,
        heads: int = 8,
        dropout: float = 0.1,
        scale: float = 0.1,
        normalize_context: bool = True,
        match_norm: bool = True,
    ) -> None:
        super().__init__()
        if attn_dim % heads:
            raise ValueError(f"attention width {attn_dim} is not divisible by {heads} heads")
        self.heads = heads
        self.head_dim = attn_dim // heads
        self.q_proj = nn.Linear(query_dim, attn_dim)
        self.k_proj = nn.Linear(context_dim, attn_dim)
        self.v_proj = nn.Linear(context_dim, attn_dim)
        self.out_proj = nn.Linear(attn_dim, query_dim)
        self.attn_drop = nn.Dropout(dropout)
        self.scale = float(scale)
        self.normalize_context = bool(normalize_context)
        self.match_norm = bool(match_norm)
        for lin in (self.q_proj, self.k_proj, self.v_proj, self.out_proj):
            nn.init.xavier_uniform_(lin.weight)
            nn.init.zeros_(lin.bias)

    def _split(self, t: torch.Tensor) -> torch.Tensor:
        b, n, _ = t.shape
        return t.reshape(b, n, self.heads, self.head_dim).transpose(1, 2)

    def attend(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """Raw attention output (before norm matching and scaling), shape of ``x``."""
        if self.normalize_context:
            context = F.normalize(context, dim=-1)
        if context.shape[0] != x.shape[0]:
            context = context.expand(x.shape[0], -1, -1)
        q = self._split(self.q_proj(x))
        k = self._split(self.k_proj(context))
        v = self._split(self.v_proj(context))
        weights = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(self.head_dim), dim=-1)
        out = self.attn_drop(weights) @ v
        out = out.transpose(1, 2).reshape(x.shape[0], x.shape[1], -1)
        return self.out_proj(out)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """The residual contribution ``scale * match(attend(x, context))`` to add to ``x``."""
        out = self.attend(x, context)
        if self.match_norm:
            out = out * (x.norm(dim=-1, keepdim=True) / (out.norm(dim=-1, keepdim=True) + 1e-6))
        return self.scale * out

    def extra_repr(self) -> str:
        return (f"heads={self.heads}, scale={self.scale}, normalize_context={self.normalize_context}, "
                f"match_norm={self.match_norm}")


class TextCrossAttention(_ResidualCrossAttention):
    """Stage 1: text hidden states (after text block 0) attend to an image context.

    Queries ``(N, 77, text_width)``; context ``(1 or N, L_img, embed_dim)`` (the fork averages the image
    context over the image batch and broadcasts it to every prompt). ViT-L: 2,362,368 parameters.
    """

    def __init__(self, text_width: int, context_dim: int, **kwargs: float | int | bool) -> None:
        super().__init__(text_width, context_dim, text_width, **kwargs)  # type: ignore[arg-type]


class ImageCrossAttention(_ResidualCrossAttention):
    """Stage 2: ViT hidden states (after block 0, CLS included) attend to a per-class text context.

    Queries ``(B, L_img, vision_width)``; context ``(B, 16 * 77, text_width)``; attention width =
    text width. ViT-L: q 1024->768, k/v 768->768, out 768->1024 = 2,755,840 parameters.
    """

    def __init__(self, vision_width: int, text_width: int, **kwargs: float | int | bool) -> None:
        super().__init__(vision_width, text_width, text_width, **kwargs)  # type: ignore[arg-type]
