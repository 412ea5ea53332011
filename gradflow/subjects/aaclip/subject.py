"""Wiring of the AA-CLIP model, loss and batches into a :class:`gradflow.subject.Subject`.

Branches (what can be ablated; every selector names residual modules whose output is the change they
make, so the ``zero`` ablation switches them off exactly):

================  ===============================================  =========
branch            selector                                         stages
================  ===============================================  =========
cross_attn        the active stage's cross-attention module        1 and 2
image_cross_attn  ``image_cross_attn``                             2
text_cross_attn   ``text_cross_attn``                              1
image_adapter     ``image_adapter.layer_adapters.*``               2
text_adapter      ``text_adapter.0`` .. ``text_adapter.{n-1}``      1 and 2
================  ===============================================  =========

Targets (trainable parameter groups; one row per matched module):

* stage 2: ``image_adapter`` (each layer adapter, each seg_proj, det_proj), ``image_adapter.layers``,
  ``seg_proj``, ``det_proj``, ``image_cross_attn``.
* stage 1: ``text_adapter`` (each residual adapter and the output projection), ``text_adapter.layers``,
  ``text_proj``, ``text_cross_attn``.

Targets of the frozen side are left out because they have no trainable parameters in that stage.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from typing import Any

import torch
from torch import nn

from gradflow.subject import Subject

from .config import AAClipConfig, apply_overrides, preset_config
from .data import resize_masks, synthetic_batches
from .losses import stage1_loss, stage2_loss
from .model import AdaptedCLIP
from .prompts import anchors_from_embeddings, class_tokens


class AAClipLoss:
    """``loss_fn(model, batch)`` of the configured stage, with the frozen-side results cached.

    Stage 2: per-class anchors ``T_c`` and text contexts come from the (frozen) adapted text encoder
    without grad and are cached per class. The cache key includes the forward hooks on the text side
    and the text parameters' version counters, so ablating a text-side module or loading new text weights
    recomputes them. Stage 1: the frozen surgery features of a batch are cached by image content.
    """

    def __init__(self, cfg: AAClipConfig, cache_size: int = 4) -> None:
        self.cfg = cfg
        self.cache_size = cache_size
        self._text_cache: dict[tuple[Any, ...], tuple[torch.Tensor, torch.Tensor]] = {}
        self._feature_cache: OrderedDict[tuple[Any, ...], list[torch.Tensor]] = OrderedDict()

    # -------------------------------------------------------------------------------------- helpers
    @staticmethod
    def _text_signature(model: AdaptedCLIP) -> tuple[Any, ...]:
        parts: list[Any] = [model.dtype, model.training]
        for module in [*model.text_adapter.modules(), *model.text_cross_attn.modules()]:
            parts.append(tuple(module._forward_hooks.keys()))
            parts.append(tuple(module._forward_pre_hooks.keys()))
        parts.extend(p._version for p in model.text_adapter.parameters())
        return tuple(parts)

    def class_text(self, model: AdaptedCLIP, class_name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """``(T_c (D, 2), context (16 * 77, text_width))`` of a class, no grad, cached."""
        key = (class_name, id(model), self._text_signature(model))
        if key not in self._text_cache:
            if len(self._text_cache) > 64:
                self._text_cache.clear()
            tokens = class_tokens(class_name, model.context_length)
            with torch.no_grad():
                anchors = anchors_from_embeddings(model.encode_text(tokens))
                context = model.text_context(tokens)
            self._text_cache[key] = (anchors, context)
        return self._text_cache[key]

    def surgery_features(self, model: AdaptedCLIP, images: torch.Tensor) -> list[torch.Tensor]:
        """Frozen stage-1 features of ``images``, cached by content."""
        digest = hashlib.sha1(images.detach().cpu().contiguous().numpy().tobytes()).hexdigest()
        key = (digest, tuple(images.shape), id(model), model.dtype)
        if key in self._feature_cache:
            self._feature_cache.move_to_end(key)
            return self._feature_cache[key]
        feats = model.surgery_features(images)
        self._feature_cache[key] = feats
        while len(self._feature_cache) > self.cache_size:
            self._feature_cache.popitem(last=False)
        return feats

    # ------------------------------------------------------------------------------------------ loss
    def __call__(self, model: nn.Module, batch: dict[str, Any]) -> torch.Tensor:
        if not isinstance(model, AdaptedCLIP):
            raise TypeError(f"AA-CLIP loss needs an AdaptedCLIP model, got {type(model).__name__}")
        images = batch["images"].to(model.dtype)
        masks = resize_masks(batch["masks"], self.cfg.image_size).to(model.dtype)
        if self.cfg.stage == "stage1":
            return self.stage1(model, images, masks, batch["class_names"])
        return self.stage2(model, images, masks, batch["labels"], batch["class_names"])

    def stage2(
        self, model: AdaptedCLIP, images: torch.Tensor, masks: torch.Tensor, labels: torch.Tensor,
        class_names: list[str],
    ) -> torch.Tensor:
        """``CE(det @ T, y) + sum_k seg(P_k, M)`` with the stage-2 cross-attention fed per-class text."""
        per_sample = [self.class_text(model, name) for name in class_names]
        anchors = torch.stack([a for a, _ in per_sample])
        context = torch.stack([c for _, c in per_sample])
        seg_tokens, det = model(images, text_context=context)
        return stage2_loss(seg_tokens, det, anchors, masks, labels, self.cfg.image_size)

    def stage1(
        self, model: AdaptedCLIP, images: torch.Tensor, masks: torch.Tensor, class_names: list[str],
    ) -> torch.Tensor:
        """Fork stage-1 loss: anchors with grad through the text adapter and text cross-attention."""
        feats = self.surgery_features(model, images)
        image_context = feats[0].mean(dim=0, keepdim=True)  # averaged over the image batch (fork)
        classes = sorted(set(class_names))
        tokens = torch.cat([class_tokens(c, model.context_length) for c in classes])
        emb = model.encode_text(tokens, image_context=image_context).reshape(len(classes), -1, model.embed_dim)
        per_class = {c: anchors_from_embeddings(emb[i]) for i, c in enumerate(classes)}
        anchors = torch.stack([per_class[c] for c in class_names])
        return stage1_loss(
            feats, anchors, masks, self.cfg.image_size, self.cfg.orth_weight, self.cfg.loss_levels
        )


def branches_for(model: AdaptedCLIP, stage: str) -> dict[str, Any]:
    """Branch name -> selector for ``stage``."""
    text_layers = [f"text_adapter.{i}" for i in range(len(model.text_adapter) - 1)]
    if stage == "stage1":
        return {"cross_attn": "text_cross_attn", "text_cross_attn": "text_cross_attn",
                "text_adapter": text_layers}
    out: dict[str, Any] = {"cross_attn": "image_cross_attn", "image_cross_attn": "image_cross_attn"}
    if len(model.image_adapter["layer_adapters"]):
        out["image_adapter"] = "image_adapter.layer_adapters.*"
    out["text_adapter"] = text_layers
    return out


def targets_for(model: AdaptedCLIP, stage: str) -> dict[str, Any]:
    """Target name -> selector for ``stage`` (individual adapter modules, one row each)."""
    if stage == "stage1":
        n = len(model.text_adapter) - 1
        return {
            "text_adapter": "text_adapter.*",
            "text_adapter.layers": [f"text_adapter.{i}" for i in range(n)],
            "text_proj": f"text_adapter.{n}",
            "text_cross_attn": "text_cross_attn",
        }
    layers = ["image_adapter.layer_adapters.*"] if len(model.image_adapter["layer_adapters"]) else []
    out: dict[str, Any] = {
        "image_adapter": [*layers, "image_adapter.seg_proj.*", "image_adapter.det_proj"],
    }
    if layers:
        out["image_adapter.layers"] = layers[0]
    out.update({
        "seg_proj": "image_adapter.seg_proj.*",
        "det_proj": "image_adapter.det_proj",
        "image_cross_attn": "image_cross_attn",
    })
    return out


def build_model(cfg: AAClipConfig, seed: int = 0, weights: str | None = None) -> AdaptedCLIP:
    """The AdaptedCLIP of ``cfg`` with all random init drawn under ``seed`` (global RNG restored after)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AdaptedCLIP(cfg)
    if weights is not None:
        from .weights import load_clip_weights

        load_clip_weights(model.clip, weights)
        model.clip.requires_grad_(False)
        model.to(model.dtype)
    return model


def make_subject(
    preset: str = "full",
    overrides: dict[str, str] | None = None,
    weights: str | None = None,
    seed: int = 0,
    stage: str | None = None,
    adapters: str | None = None,
    data: str | None = None,
) -> Subject:
    """The ``aaclip`` gradflow subject.

    ``preset``: full | native | small | tiny. ``overrides``: string key/values (see
    :func:`gradflow.subjects.aaclip.config.apply_overrides`). ``weights``: a local CLIP weight file (open_clip
    state dict, safetensors, or the OpenAI TorchScript ``ViT-L-14-336px.pt``); default random init.
    ``seed`` seeds the model init and the synthetic batches. ``stage``: stage1 | stage2 (default: config).
    ``adapters``: a folder with trained ``text_adapter.pth`` / ``image_adapter.pth`` (and optionally the
    cross-attention files) to load after the random init. ``data``: an MVTec-AD / VisA-style folder
    (``<class>/test/<defect>/<image>`` with ``<class>/ground_truth/...`` masks) to take batches from, in order;
    default: deterministic synthetic batches.
    """
    cfg = preset_config(preset)
    merged: dict[str, Any] = {}
    if stage is not None:
        merged["stage"] = stage
    merged.update(overrides or {})
    cfg = apply_overrides(cfg, merged)
    model = build_model(cfg, seed=seed, weights=weights)
    loaded: list[str] = []
    if adapters is not None:
        from .checkpoints import GROUPS, load_adapters

        loaded = load_adapters(model, adapters, groups=GROUPS)
    config = cfg.to_dict()
    config.update({"seed": seed, "weights": weights, "adapters": adapters, "adapter_groups_loaded": loaded,
                   "data": data, "parameter_counts": model.parameter_counts()})
    if data is not None:
        from .data import folder_batches, scan_mvtec_folder

        batches = folder_batches(scan_mvtec_folder(data), cfg.image_size, cfg.batch_size)
    else:
        batches = synthetic_batches(cfg, seed)
    return Subject(
        model=model,
        loss_fn=AAClipLoss(cfg),
        batches=batches,
        branches=branches_for(model, cfg.stage),
        targets=targets_for(model, cfg.stage),
        name="aaclip",
        preset=preset,
        config=config,
        default_branches=["cross_attn"],
        default_targets=["image_adapter"] if cfg.stage == "stage2" else ["text_adapter"],
        # Sequential: batches are added (looks at 3, 6, 12, 24) until every verdict is decided, so a clear
        # case stops after 3 batches and an ambiguous one gets the batches it needs.
        default_batches="auto",
    )
