"""AdaptedCLIP with the fork's cross-attention branches, on a frozen open_clip 3.x backbone.

Module tree (names matter: gradflow selectors address them)::

    clip                          frozen open_clip CLIP (requires_grad False everywhere)
    text_adapter.0 .. .{n-1}      ResidualAdapter(text_width) after text blocks 0..n-1 (n = text_adapt_until)
    text_adapter.{n}              SimpleProj(text_width -> embed_dim, relu=True), replaces text_projection
    image_adapter.layer_adapters.0 .. .{m-1}   ResidualAdapter(vision_width) after ViT blocks 0..m-1
    image_adapter.seg_proj.0 .. .3             SimpleProj(vision_width -> embed_dim), one per level
    image_adapter.det_proj                     SimpleProj(vision_width -> embed_dim)
    text_cross_attn               stage 1: text (after block 0) attends to an image context
    image_cross_attn              stage 2: ViT tokens (after block 0) attend to a per-class text context

All residual modules (adapters, cross-attention) return the change they make; the model adds it
(``x = x + module(x, ...)``), so zeroing a module's output removes it exactly.

Blocks run batch-first (open_clip 3.x). The model is kept in eval mode like the official code (which
never calls ``.train()``): dropout in the cross-attention is inactive and ``train()`` is a no-op unless
``cfg.train_mode`` is True. Consequence: the diagnosis measures the deterministic network; with
``train_mode`` the 0.1 attention dropout is live and passes are only comparable under the same RNG seed.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .adapters import ResidualAdapter, SimpleProj, xavier_init_
from .config import AAClipConfig
from .cross_attention import ImageCrossAttention, TextCrossAttention
from .surgery import surgery_block_forward

_DTYPES = {"float32": torch.float32, "float64": torch.float64}


def build_backbone(cfg: AAClipConfig) -> nn.Module:
    """A randomly initialised open_clip CLIP for ``cfg`` (GELU, not QuickGELU, as AA-CLIP runs)."""
    import open_clip
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    if cfg.model_cfg is not None:
        vision = dict(cfg.model_cfg["vision_cfg"], image_size=cfg.image_size)
        return CLIP(
            embed_dim=int(cfg.model_cfg["embed_dim"]),
            vision_cfg=CLIPVisionCfg(**vision),
            text_cfg=CLIPTextCfg(**cfg.model_cfg["text_cfg"]),
        )
    return open_clip.create_model(cfg.model_name, pretrained=None, force_image_size=cfg.image_size)


class AdaptedCLIP(nn.Module):
    """AA-CLIP's adapted CLIP plus the wei-paul fork's two cross-attention branches."""

    def __init__(self, cfg: AAClipConfig, clip: nn.Module | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.clip = clip if clip is not None else build_backbone(cfg)
        self.clip.requires_grad_(False)
        self.vision_width = int(self.clip.visual.conv1.out_channels)
        self.text_width = int(self.clip.token_embedding.embedding_dim)
        self.embed_dim = int(self.clip.visual.proj.shape[1])
        self.vision_depth = len(self.clip.visual.transformer.resblocks)
        self.text_depth = len(self.clip.transformer.resblocks)
        self.context_length = int(self.clip.context_length)
        if cfg.levels[-1] > self.vision_depth or cfg.image_adapt_until > self.vision_depth:
            raise ValueError(f"levels/adapters exceed the backbone's {self.vision_depth} blocks")
        if cfg.text_adapt_until > self.text_depth:
            raise ValueError(f"text_adapt_until exceeds the backbone's {self.text_depth} text blocks")

        self.text_adapter = nn.ModuleList(
            [ResidualAdapter(self.text_width, cfg.text_adapt_weight) for _ in range(cfg.text_adapt_until)]
            + [SimpleProj(self.text_width, self.embed_dim, relu=True)]
        )
        self.image_adapter = nn.ModuleDict(
            {
                "layer_adapters": nn.ModuleList(
                    ResidualAdapter(self.vision_width, cfg.image_adapt_weight)
                    for _ in range(cfg.image_adapt_until)
                ),
                "seg_proj": nn.ModuleList(
                    SimpleProj(self.vision_width, self.embed_dim, relu=cfg.relu) for _ in cfg.levels
                ),
                "det_proj": SimpleProj(self.vision_width, self.embed_dim, relu=cfg.relu),
            }
        )
        xavier_init_(self.text_adapter)
        xavier_init_(self.image_adapter)
        common = {"heads": cfg.heads, "dropout": cfg.dropout, "match_norm": cfg.match_norm}
        self.text_cross_attn = TextCrossAttention(
            self.text_width, self.embed_dim, scale=cfg.resolved_text_cross_attn_weight,
            normalize_context=False, **common,
        )
        self.image_cross_attn = ImageCrossAttention(
            self.vision_width, self.text_width, scale=cfg.resolved_image_cross_attn_weight,
            normalize_context=cfg.normalize_context, **common,
        )
        self.use_cross_attention = cfg.use_cross_attention
        self.to(_DTYPES[cfg.dtype])
        self.set_stage(cfg.stage)
        self.eval()

    # ------------------------------------------------------------------------------------------ setup
    @property
    def dtype(self) -> torch.dtype:
        """Floating dtype of the model."""
        return self.clip.visual.conv1.weight.dtype

    def train(self, mode: bool = True) -> AdaptedCLIP:
        """Stay in eval mode (as the official code runs) unless ``cfg.train_mode`` allows training mode."""
        return super().train(bool(mode) and self.cfg.train_mode)

    def stage_modules(self, stage: str) -> list[nn.Module]:
        """Trainable modules of a stage: stage1 = text side, stage2 = image side."""
        if stage == "stage1":
            return [self.text_adapter, self.text_cross_attn]
        if stage == "stage2":
            return [self.image_adapter, self.image_cross_attn]
        raise ValueError(f"stage must be 'stage1' or 'stage2', got {stage!r}")

    def set_stage(self, stage: str) -> None:
        """Make exactly the stage's groups trainable; the CLIP backbone stays frozen."""
        for module in (self.text_adapter, self.text_cross_attn, self.image_adapter, self.image_cross_attn):
            module.requires_grad_(False)
        for module in self.stage_modules(stage):
            module.requires_grad_(True)
        self.clip.requires_grad_(False)
        self.stage = stage

    # ------------------------------------------------------------------------------------------- text
    def text_hidden(
        self,
        tokens: torch.Tensor,
        image_context: torch.Tensor | None = None,
        use_cross_attention: bool | None = None,
        stop_after: int | None = None,
        adapt: bool = True,
    ) -> torch.Tensor:
        """Hidden text sequence ``(N, 77, text_width)`` after ``stop_after`` blocks (default: all).

        After block 0 the stage-1 cross-attention is added when an ``image_context`` is given and
        cross-attention is on; after blocks ``0..text_adapt_until-1`` the residual adapters run.
        """
        clip = self.clip
        use_ca = self.use_cross_attention if use_cross_attention is None else use_cross_attention
        x = clip.token_embedding(tokens).to(self.dtype) + clip.positional_embedding.to(self.dtype)
        n_adapters = len(self.text_adapter) - 1
        for i, block in enumerate(clip.transformer.resblocks):
            x = block(x, attn_mask=clip.attn_mask)
            if adapt and i == 0 and image_context is not None and use_ca:
                x = x + self.text_cross_attn(x, image_context)
            if adapt and i < n_adapters:
                x = x + self.text_adapter[i](x)
            if stop_after is not None and i + 1 >= stop_after:
                break
        return x

    def encode_text(
        self,
        tokens: torch.Tensor,
        image_context: torch.Tensor | None = None,
        use_cross_attention: bool | None = None,
        adapt: bool = True,
    ) -> torch.Tensor:
        """Text embeddings ``(N, embed_dim)``, unnormalised.

        Adapted path: EOT token after ln_final through ``text_adapter[-1]`` (CLIP's text_projection is
        bypassed). ``adapt=False`` gives the original CLIP text path.
        """
        x = self.clip.ln_final(self.text_hidden(tokens, image_context, use_cross_attention, adapt=adapt))
        eot = x[torch.arange(x.shape[0], device=x.device), tokens.argmax(dim=-1)]
        if adapt:
            return self.text_adapter[-1](eot)
        return eot @ self.clip.text_projection.to(self.dtype)

    def text_context(self, tokens: torch.Tensor) -> torch.Tensor:
        """Stage-2 context of one class: hidden states after text block 0 + adapter 0, flattened.

        ``tokens (16, 77)`` -> ``(16 * 77, text_width)``; padding tokens included, no ln_final, and not
        normalised here (v2 normalises per token inside :class:`ImageCrossAttention`). With
        ``cfg.text_context_norm`` (a calibration) every token is rescaled to that L2 norm.
        """
        context = self.text_hidden(tokens, stop_after=1).reshape(-1, self.text_width)
        if self.cfg.text_context_norm is not None:
            context = context * (self.cfg.text_context_norm / context.norm(dim=-1, keepdim=True).clamp_min(1e-12))
        return context

    # ------------------------------------------------------------------------------------------ image
    def forward(
        self,
        images: torch.Tensor,
        text_context: torch.Tensor | None = None,
        use_cross_attention: bool | None = None,
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Adapted image encoder: ``(seg_tokens, det_token)``.

        ``seg_tokens[k]``: ``(B, L, embed_dim)`` unit-norm tokens of level k; ``det_token``: ``(B, embed_dim)``,
        the mean of unit-norm det_proj tokens of the last level. ``text_context (B, T, text_width)`` feeds
        the stage-2 cross-attention after ViT block 0 when cross-attention is on.
        """
        visual = self.clip.visual
        use_ca = self.use_cross_attention if use_cross_attention is None else use_cross_attention
        levels = set(self.cfg.levels)
        adapters = self.image_adapter["layer_adapters"]
        x = visual._embeds(images.to(self.dtype))
        taps: list[torch.Tensor] = []
        for i, block in enumerate(visual.transformer.resblocks):
            x = block(x)
            if i == 0 and text_context is not None and use_ca:
                x = x + self.image_cross_attn(x, text_context)
            if i < len(adapters):
                x = x + adapters[i](x)
            if i + 1 in levels:
                taps.append(x[:, 1:])
            if i + 1 >= self.cfg.levels[-1]:
                break
        seg_tokens = [
            F.normalize(proj(visual.ln_post(tap)), dim=-1)
            for proj, tap in zip(self.image_adapter["seg_proj"], taps, strict=True)
        ]
        det = F.normalize(self.image_adapter["det_proj"](visual.ln_post(taps[-1])), dim=-1).mean(dim=1)
        return seg_tokens, det

    @torch.no_grad()
    def global_image_embedding(self, images: torch.Tensor) -> torch.Tensor:
        """Plain frozen CLIP image embedding (ln_post(CLS) @ proj), L2-normalised: ``(B, embed_dim)``."""
        visual = self.clip.visual
        x = visual._embeds(images.to(self.dtype))
        for block in visual.transformer.resblocks:
            x = block(x)
        return F.normalize(visual.ln_post(x[:, 0]) @ visual.proj, dim=-1)

    @torch.no_grad()
    def surgery_features(self, images: torch.Tensor, levels: Sequence[int] | None = None) -> list[torch.Tensor]:
        """Stage-1 patch features from the frozen DPAM-modified backbone, one per level.

        Per level: block output without CLS -> ln_post -> @ visual.proj -> L2 normalise per token, plus the
        normalised global embedding of the plain CLIP (sum not renormalised): ``(B, L, embed_dim)``.
        """
        visual = self.clip.visual
        levels = list(self.cfg.levels if levels is None else levels)
        first_surgery = self.vision_depth - self.cfg.surgery_layers
        x = visual._embeds(images.to(self.dtype))
        taps = []
        for i, block in enumerate(visual.transformer.resblocks):
            x = block(x) if i < first_surgery else surgery_block_forward(block, x, self.cfg.surgery_mode)
            if i + 1 in levels:
                taps.append(x[:, 1:])
            if i + 1 >= levels[-1]:
                break
        glob = self.global_image_embedding(images)[:, None, :]
        return [F.normalize(visual.ln_post(t) @ visual.proj, dim=-1) + glob for t in taps]

    # ---------------------------------------------------------------------------------------- counts
    def parameter_counts(self) -> dict[str, int]:
        """Parameter counts of the trainable groups (as in the spec's table)."""

        def count(module: nn.Module) -> int:
            return sum(p.numel() for p in module.parameters())

        layer = count(self.image_adapter["layer_adapters"])
        seg = count(self.image_adapter["seg_proj"])
        det = count(self.image_adapter["det_proj"])
        return {
            "text_adapter": count(self.text_adapter),
            "image_adapter.layer_adapters": layer,
            "image_adapter.seg_proj": seg,
            "image_adapter.det_proj": det,
            "image_adapter": layer + seg + det,
            "text_cross_attn": count(self.text_cross_attn),
            "image_cross_attn": count(self.image_cross_attn),
        }
