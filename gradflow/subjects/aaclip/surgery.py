"""DPAM ("V-V attention") surgery for the frozen stage-1 patch-feature extractor.

AA-CLIP's ``clip_surgery`` copy replaces the attention of the last ``surgery_layers`` ViT blocks
(19 of 24: 0-based blocks 5..23) by V-V attention reusing the block's own weights: ``v`` from the fused
in-projection, then ``softmax(v v^T / sqrt(d)) v`` per head, then the block's out-projection. Only that
path feeds the residual stream; the rest of the block (ln_1 before, residual add, ln_2 + MLP) is as usual.

We do not copy the backbone: :func:`surgery_block_forward` runs a frozen open_clip
``ResidualAttentionBlock`` with V-V attention, reading its parameters.

Choice of attention axis (``AAClipConfig.surgery_mode``):

* ``"tokens"`` (default, the *intended* CLIP-Surgery behaviour): every token attends over the tokens of
  its own image. Features of an image do not depend on the rest of the batch, which a gradient
  diagnosis needs (per-batch numbers must not change with batch composition).
* ``"batch"`` (*faithful* to the official code as it runs): the upstream module assumes batch-first input
  but is fed sequence-first tensors, so the softmax runs over the batch axis — each token position attends
  to the same position in the other images of the batch; with batch size 1 it reduces to ``out_proj(v)``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def vv_attention(block: nn.Module, x: torch.Tensor, mode: str = "tokens") -> torch.Tensor:
    """V-V attention output of ``block.attn`` (an ``nn.MultiheadAttention``) for normed input ``x``.

    ``x`` is batch-first ``(B, L, D)``; the result has the same shape.
    """
    attn = block.attn
    dim = x.shape[-1]
    heads = attn.num_heads
    head_dim = dim // heads
    w_v = attn.in_proj_weight[2 * dim:]
    b_v = attn.in_proj_bias[2 * dim:] if attn.in_proj_bias is not None else None
    v = F.linear(x, w_v, b_v)
    if mode == "batch":
        v = v.transpose(0, 1)  # (L, B, D): the attention axis becomes the batch
    elif mode != "tokens":
        raise ValueError(f"surgery mode must be 'tokens' or 'batch', got {mode!r}")
    n, s, _ = v.shape
    vh = v.reshape(n, s, heads, head_dim).transpose(1, 2)  # (n, H, s, hd)
    weights = torch.softmax(vh @ vh.transpose(-2, -1) / math.sqrt(head_dim), dim=-1)
    out = (weights @ vh).transpose(1, 2).reshape(n, s, dim)
    if mode == "batch":
        out = out.transpose(0, 1)
    return attn.out_proj(out)


def surgery_block_forward(block: nn.Module, x: torch.Tensor, mode: str = "tokens") -> torch.Tensor:
    """One open_clip ``ResidualAttentionBlock`` with its attention replaced by V-V attention."""
    x = x + block.ls_1(vv_attention(block, block.ln_1(x), mode))
    return x + block.ls_2(block.mlp(block.ln_2(x)))
