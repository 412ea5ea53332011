"""Configuration of the AA-CLIP subject: one dataclass, four presets, string overrides.

Presets
-------
``full``
    ViT-L-14-336 at 518 px, exactly the AA-CLIP defaults (levels 6/12/18/24, image adapters after blocks
    0..5, text adapters after text blocks 0..2).
``native``
    The same backbone at its native 336 px (24 x 24 patch grid).
``small``
    ViT-B-16 at 224 px with the same structure scaled to 12 blocks: levels 3/6/9/12, image adapters after
    blocks 0..2 (a quarter of the depth, like 6 of 24), text adapters after text blocks 0..2.
``tiny``
    A four-block toy CLIP (vision width 64, patch 16, 64 px; text width 64, 4 blocks; embed dim 32) built
    from a model config dict. Random weights; a stage-2 pass takes well under a second on a CPU.

Override keys
-------------
Every field name is a key (``version``, ``image_size``, ``levels`` ...). Stage-scoped spellings are
accepted too: ``stage1.text_cross_attn_weight``, ``stage1.batch_size``, ``stage1.orth_weight``,
``stage1.loss_levels``, ``stage1.surgery_mode``, ``stage1.surgery_layers``,
``stage2.image_cross_attn_weight``, ``stage2.batch_size``. Plain ``batch_size`` sets the batch size of
the configured stage. Values are strings and are parsed by the field's type.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import field
from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, ValidationError
from pydantic.dataclasses import dataclass

from gradflow.errors import SubjectError

#: Default cross-attention scale per version: v1 added the branch at full scale (the gradient-dilution
#: bug), v2 is the fork's current code (0.1 after per-token norm matching, L2-normalised text context).
VERSION_DEFAULT_WEIGHT = {"v1": 1.0, "v2": 0.1}

DEFAULT_CLASSES = ["candle", "pcb1", "capsules", "cashew", "macaroni1", "fryum"]

TINY_MODEL_CFG: dict[str, Any] = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 64, "layers": 4, "width": 64, "head_width": 16, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 4, "layers": 4},
}


PositiveInt = Annotated[int, Field(ge=1)]
Weight = Annotated[float, Field(ge=0.0, le=1.0)]


@dataclass(config=ConfigDict(validate_assignment=True, strict=False, extra="forbid"))
class AAClipConfig:
    """All knobs of the AA-CLIP subject (defaults = the ``full`` preset).

    Every field has a type and, where it has one, an allowed range, checked when the config is built and
    whenever a field is set (pydantic); cross-field rules (levels within the backbone's depth, heads that
    divide the attention width, ...) are checked by :meth:`validate`.
    """

    preset: str = "full"
    #: open_clip model name (used when ``model_cfg`` is None).
    model_name: str = "ViT-L-14-336"
    #: a custom open_clip model config (``embed_dim``, ``vision_cfg``, ``text_cfg``); overrides model_name.
    model_cfg: dict[str, Any] | None = None
    image_size: Annotated[int, Field(ge=16, le=4096)] = 518
    text_adapt_weight: Weight = 0.1
    image_adapt_weight: Weight = 0.1
    text_adapt_until: Annotated[int, Field(ge=1)] = 3
    image_adapt_until: Annotated[int, Field(ge=0)] = 6
    #: 1-based block indices whose outputs (without CLS) feed seg_proj; the last one also feeds det_proj.
    levels: list[PositiveInt] = field(default_factory=lambda: [6, 12, 18, 24])
    #: LeakyReLU after seg_proj / det_proj (AA-CLIP's ``--relu``, default False).
    relu: bool = False
    #: cross-attention variant of the wei-paul fork: 'v1' (full-scale add, raw text context, no norm
    #: matching) or 'v2' (L2-normalised context, norm-matched output, 0.1 scale).
    version: Literal["v1", "v2"] = "v2"
    #: scale of the stage-1 / stage-2 cross-attention output; None = the version's default.
    text_cross_attn_weight: Annotated[float, Field(ge=0.0, le=100.0, allow_inf_nan=False)] | None = None
    image_cross_attn_weight: Annotated[float, Field(ge=0.0, le=100.0, allow_inf_nan=False)] | None = None
    #: calibration, not a property of AA-CLIP: rescale the stage-2 text context per token to this L2 norm
    #: (None: as the random-init model gives it, about 0.6). The fork's docs put the real model's raw text
    #: context at "per-token norm about 17" (GRADIENT_DILUTION_FIX.md, shared/reference/aaclip.md s. 11); runs
    #: with it are labelled "random init, calibrated magnitudes". v2 normalises the context, so only v1 feels it.
    text_context_norm: Annotated[float, Field(gt=0.0, le=1e4, allow_inf_nan=False)] | None = None
    #: turn the cross-attention branches on at all (the model's own flag; False = plain AA-CLIP).
    use_cross_attention: bool = True
    heads: Annotated[int, Field(ge=1, le=1024)] = 8
    dropout: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.1
    #: keep every module in eval mode even if .train() is called (as the official code runs).
    train_mode: bool = False
    stage: Literal["stage1", "stage2"] = "stage2"
    stage1_batch_size: Annotated[int, Field(ge=1, le=4096)] = 16
    stage2_batch_size: Annotated[int, Field(ge=1, le=4096)] = 2
    #: weight of the orthogonality (disentanglement) loss in stage 1.
    orth_weight: Annotated[float, Field(ge=0.0, le=1000.0, allow_inf_nan=False)] = 0.1
    #: stage-1 segmentation loss levels: 'all' (wei-paul fork) or 'last' (official code as it runs).
    loss_levels: Literal["all", "last"] = "all"
    #: DPAM V-V attention axis of the stage-1 feature extractor: 'tokens' (intended) or 'batch' (faithful).
    surgery_mode: Literal["tokens", "batch"] = "tokens"
    #: how many of the last ViT blocks get DPAM surgery (AA-CLIP: 19 of 24, blocks 5..23).
    surgery_layers: Annotated[int, Field(ge=0)] = 19
    class_names: list[Annotated[str, Field(min_length=1, max_length=200)]] = field(
        default_factory=lambda: list(DEFAULT_CLASSES))
    #: probability that a synthetic image carries a pasted defect.
    anomaly_prob: Weight = 0.5
    dtype: Literal["float32", "float64"] = "float32"

    # ----------------------------------------------------------------------------------------------
    @property
    def batch_size(self) -> int:
        """Batch size of the configured stage."""
        return self.stage1_batch_size if self.stage == "stage1" else self.stage2_batch_size

    @property
    def resolved_text_cross_attn_weight(self) -> float:
        """Stage-1 cross-attention scale after applying the version default."""
        w = self.text_cross_attn_weight
        return VERSION_DEFAULT_WEIGHT[self.version] if w is None else float(w)

    @property
    def resolved_image_cross_attn_weight(self) -> float:
        """Stage-2 cross-attention scale after applying the version default."""
        w = self.image_cross_attn_weight
        return VERSION_DEFAULT_WEIGHT[self.version] if w is None else float(w)

    @property
    def normalize_context(self) -> bool:
        """v2 L2-normalises the cross-attention context per token; v1 does not."""
        return self.version == "v2"

    @property
    def match_norm(self) -> bool:
        """v2 rescales the cross-attention output per token to the hidden state's norm; v1 does not."""
        return self.version == "v2"

    def vision_layers(self) -> int:
        """Number of ViT blocks of the backbone."""
        if self.model_cfg is not None:
            return int(self.model_cfg["vision_cfg"]["layers"])
        return _KNOWN_DEPTHS.get(self.model_name, (None, None))[0] or max(self.levels)

    def text_layers(self) -> int | None:
        """Number of text blocks, if known without building the model."""
        if self.model_cfg is not None:
            return int(self.model_cfg["text_cfg"]["layers"])
        return _KNOWN_DEPTHS.get(self.model_name, (None, None))[1]

    def widths(self) -> tuple[int, int, int] | None:
        """``(vision width, text width, patch size)`` of the backbone, if known without building it."""
        if self.model_cfg is not None:
            vision, text = self.model_cfg["vision_cfg"], self.model_cfg["text_cfg"]
            return int(vision["width"]), int(text["width"]), int(vision["patch_size"])
        known = _KNOWN_DEPTHS.get(self.model_name)
        return known[2:] if known else None

    def validate(self) -> AAClipConfig:
        """Check what involves several fields; raises :class:`SubjectError` with what to change.

        (Each field's own type and range is checked by pydantic when it is set.)
        """
        problems = []
        depth = self.vision_layers()
        if not self.levels or sorted(set(self.levels)) != list(self.levels):
            problems.append(f"levels must be strictly increasing, got {self.levels}")
        elif self.levels[-1] > depth:
            problems.append(f"levels must lie in 1..{depth} (1-based block indices), got {self.levels}")
        if not 0 <= self.image_adapt_until <= depth:
            problems.append(f"image_adapt_until must lie in 0..{depth}, got {self.image_adapt_until}")
        if not 0 <= self.surgery_layers <= depth:
            problems.append(f"surgery_layers must lie in 0..{depth}, got {self.surgery_layers}")
        text_depth = self.text_layers()
        if text_depth is not None and not 1 <= self.text_adapt_until <= text_depth:
            problems.append(f"text_adapt_until must lie in 1..{text_depth}, got {self.text_adapt_until}")
        widths = self.widths()
        if widths is not None:
            vision_width, text_width, patch = widths
            if text_width % self.heads:
                divisors = [h for h in range(1, min(text_width, 64) + 1) if text_width % h == 0]
                problems.append(f"heads must divide the cross-attention width {text_width}, got {self.heads} "
                                f"(e.g. {', '.join(map(str, divisors[-6:]))})")
            if self.image_size < patch:
                problems.append(f"image_size must be at least the patch size {patch}, got {self.image_size}")
        if not self.class_names:
            problems.append("class_names must not be empty")
        if problems:
            raise SubjectError("invalid AA-CLIP config: " + "; ".join(problems) + ".")
        return self

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict, including the resolved cross-attention weights."""
        out = dataclasses.asdict(self)
        out["resolved_text_cross_attn_weight"] = self.resolved_text_cross_attn_weight
        out["resolved_image_cross_attn_weight"] = self.resolved_image_cross_attn_weight
        out["magnitudes"] = "random init" if self.text_context_norm is None else (
            f"random init, calibrated magnitudes (text context per-token norm {self.text_context_norm:g})")
        return out


#: model name -> (vision blocks, text blocks, vision width, text width, patch size)
_KNOWN_DEPTHS: dict[str, tuple[int, int, int, int, int]] = {
    "ViT-L-14-336": (24, 12, 1024, 768, 14), "ViT-B-16": (12, 12, 768, 512, 16)}

PRESETS: dict[str, dict[str, Any]] = {
    "full": {},
    "native": {"image_size": 336},
    "small": {
        "model_name": "ViT-B-16",
        "image_size": 224,
        "image_adapt_until": 3,
        "levels": [3, 6, 9, 12],
        "surgery_layers": 9,
        "stage1_batch_size": 8,
    },
    "tiny": {
        "model_name": "aaclip-tiny",
        "model_cfg": TINY_MODEL_CFG,
        "image_size": 64,
        "image_adapt_until": 2,
        "levels": [1, 2, 3, 4],
        "surgery_layers": 3,
        "stage1_batch_size": 4,
        "class_names": ["candle", "pcb1", "cashew"],
    },
}


def preset_config(preset: str = "full") -> AAClipConfig:
    """A fresh config of the named preset; unknown names raise :class:`SubjectError`."""
    if preset not in PRESETS:
        raise SubjectError(f"unknown AA-CLIP preset {preset!r}; choose one of: {', '.join(PRESETS)}.")
    values = copy.deepcopy(PRESETS[preset])
    return AAClipConfig(preset=preset, **values).validate()


# --------------------------------------------------------------------------------------------------
# overrides

_STAGE_ALIASES = {
    "stage1.text_cross_attn_weight": "text_cross_attn_weight",
    "stage1.batch_size": "stage1_batch_size",
    "stage1.orth_weight": "orth_weight",
    "stage1.loss_levels": "loss_levels",
    "stage1.surgery_mode": "surgery_mode",
    "stage1.surgery_layers": "surgery_layers",
    "stage1.text_adapt_weight": "text_adapt_weight",
    "stage2.image_cross_attn_weight": "image_cross_attn_weight",
    "stage2.text_context_norm": "text_context_norm",
    "stage2.batch_size": "stage2_batch_size",
    "stage2.image_adapt_weight": "image_adapt_weight",
}
_NOT_OVERRIDABLE = {"preset", "model_cfg"}
_BOOL_FIELDS = {"relu", "use_cross_attention", "train_mode"}
_BOOL_WORDS = {"true": True, "1": True, "yes": True, "on": True, "false": False, "0": False, "no": False,
               "off": False}


def override_keys() -> list[str]:
    """Every key :func:`apply_overrides` accepts."""
    names = [f.name for f in dataclasses.fields(AAClipConfig) if f.name not in _NOT_OVERRIDABLE]
    return sorted([*names, "batch_size", *_STAGE_ALIASES])


_LIST_FIELDS = {"levels", "class_names"}
_OPTIONAL_FIELDS = {"text_cross_attn_weight", "image_cross_attn_weight", "text_context_norm"}


def _parse(field_name: str, raw: Any) -> Any:
    """A string override as the field's raw value; pydantic converts and range-checks it when it is set."""
    text = str(raw).strip()
    if field_name in _OPTIONAL_FIELDS and text.lower() in ("none", "default", ""):
        return None
    if field_name in _LIST_FIELDS:
        return [p.strip().strip("'\"") for p in text.strip("[]()").split(",") if p.strip()]
    if text.lower() in _BOOL_WORDS and field_name in _BOOL_FIELDS:
        return _BOOL_WORDS[text.lower()]
    return text


def apply_overrides(cfg: AAClipConfig, overrides: dict[str, Any] | None) -> AAClipConfig:
    """Return a copy of ``cfg`` with string ``overrides`` applied and validated.

    Unknown keys and unparsable values raise :class:`SubjectError` listing the valid keys.
    """
    out = copy.deepcopy(cfg)
    if not overrides:
        return out.validate()
    types = {f.name for f in dataclasses.fields(AAClipConfig)}
    for key, raw in overrides.items():
        if key == "batch_size":
            field_name = "stage1_batch_size" if out.stage == "stage1" else "stage2_batch_size"
        else:
            field_name = _STAGE_ALIASES.get(key, key)
        if field_name not in types or field_name in _NOT_OVERRIDABLE:
            raise SubjectError(
                f"unknown AA-CLIP override key {key!r}. Valid keys: {', '.join(override_keys())}."
            )
        try:
            setattr(out, field_name, _parse(field_name, raw))
        except ValidationError as exc:
            error = exc.errors()[0]
            raise SubjectError(f"invalid AA-CLIP override {key}={raw!r}: {error['msg']} (field "
                               f"{field_name!r}).") from None
    return out.validate()
