"""Switches and hyper-parameters of the methods: the `train.fixclip`, `train.longclip` and `train.holistic` sections
of params.yaml, defined once (torch-free, so that validating params stays fast), and ``MethodSection``, what every
method's section tells the torch-free side (``fixclip.methods`` registers the sections by method name).

A strict pydantic model (unknown keys and mistyped values are errors naming the key); the checks that need the
backbone (e.g. prompt_grid must fit its patch grid) run in ``check_fits`` when the model is built.
"""
from typing import ClassVar, Literal, Optional

from pydantic import Field, model_validator

from core.config import StrictConfig

CLIP_CONTEXT = 77  # the text positions of every CLIP the stretch is meant for
# The keys of the fixclip section that Long-CLIP and Holistic CLIP read too: they share FIX-CLIP's text stretch.
STRETCH_KEYS = ("stretch_keep", "stretch_ratio", "trim_text_padding")


class MethodSection(StrictConfig):
    """A method's params section, ``train.<method>``: its keys, and what params validation and the data stream must
    know of the method before any model is built. The defaults: it reads one long caption per sample (long.txt, or
    one drawn per step from the first ``train.caption_pool``) and no other method's keys."""

    # Keys of other methods' sections this method reads, by section: they may be set when it is chosen.
    reads: ClassVar[dict[str, tuple[str, ...]]] = {}
    # True: it reads all of a sample's captions (``captions``), each written by another caption prompt, and never
    # draws one; ``captions_key`` is the key that sets their number (named in errors).
    reads_all_captions: ClassVar[bool] = False
    captions_key: ClassVar[str] = "caption_pool"

    def captions(self, caption_pool: int) -> int:
        """How many long captions per sample it reads (long.txt for 1, else long_0.txt ..)."""
        return caption_pool


class FixClipConfig(MethodSection):
    """FIX-CLIP modules; ablations: dvc exp run -S train.fixclip.<switch>=false. Every module can be switched off
    independently (the paper's ablation table).

    Where the paper is silent the defaults are our choice, sized for the tiny 4-layer, 64-patch base CLIP
    in ``assets/base_clip`` (docs/methods.md, "Set-up choices where the paper is silent").
    """

    stretch: bool = True
    """Long-CLIP positional stretch 77 -> 248: knowledge-preserving interpolation to keep + ratio * (77 - keep)
    positions."""
    stretch_keep: int = Field(20, ge=1)
    """First positions copied and frozen."""
    stretch_ratio: int = Field(4, ge=1)
    """Each later position is interpolated into this many."""
    trim_text_padding: bool = True
    """Drop padding columns (exact under the causal mask; speed only): trailing padding of a token batch is cut
    before the text tower; the pooled EOT token never attends to later positions."""

    dual_branch: bool = True
    """Short caption <-> masked image (L_short), next to long caption <-> raw image (L_long)."""
    mask_ratio: float = Field(0.75, ge=0.0, lt=1.0)
    """Share of image patches the short branch masks."""
    mask_seed: int = 0
    """Per rank: mask_seed + rank; its state is saved in checkpoints."""

    regional_prompts: bool = True
    """One prompt per image region of a prompt_grid split, from image layer prompt_start_layer on; every later layer
    adds fresh parameters to the prompt outputs of the layer before (see regional_prompts). A region is the 2-D block
    of patches whose centres fall in it."""
    prompt_grid: list[int] = [3, 3]
    """One prompt per image region (M = 9): the toy world's 3 x 3 cells. [rows, cols]; ViT-B/16's 14 x 14 grid takes
    e.g. 2 x 2 quadrants."""
    prompt_start_layer: int = Field(3, ge=1)
    """l, 1-based (paper notation): the first image layer with prompts."""
    prompt_regions: Literal["grid", "raster"] = "grid"
    """Grid: 2-D blocks of prompt_grid | raster: the paper's consecutive blocks of N/M patches (docs/methods.md,
    "Where we differ from the paper")."""
    prompt_layers: Literal["carried", "fresh"] = "carried"
    """Carried: each layer's prompts add to the last layer's prompt outputs | fresh: replace them (paper)."""
    prompt_lr_scaled: bool = False
    """True: prompts train at new_params_lr_scale, like the mask token and HFA heads (train.new_params_lr_scale times
    the learning rate)."""

    hfa: bool = True
    """Hierarchical feature alignment: G groups of S = L / G layers, a loss on groups K..G (1-based) weighted w_i."""
    hfa_groups: int = Field(2, ge=1)
    """G; divides both tower depths."""
    hfa_first_group: int = Field(2, ge=1)
    """K: the deeper groups only."""
    hfa_weights: list[float] = [1.0]
    """w_K..w_G."""
    hfa_sigma: float = Field(1.0, gt=0.0)
    """Width of the Gaussian that weights a group's layers (group token aggregation), centred on its last layer."""
    hfa_branch: Literal["long", "short"] = "long"
    """Long (long caption <-> raw image) | short (short caption <-> masked image): the pairs HFA aligns."""
    hfa_logit_scale_init: float = Field(14.29, gt=1.0)
    """Each group's own learnable logit scale starts at CLIP's 1 / 0.07: its heads start random, and the main scale
    of a trained CLIP, ~100, would make their first losses huge."""
    hfa_warmup_steps: int = Field(50, ge=0)
    """The random HFA heads first learn alone: no HFA gradient reaches the backbone."""

    label_smoothing: float = Field(0.1, ge=0.0, lt=1.0)
    """Long-CLIP's label smoothing of the contrastive losses."""

    @model_validator(mode="after")
    def _consistent(self):
        if self.hfa and len(self.hfa_weights) != self.hfa_groups - self.hfa_first_group + 1:
            raise ValueError(f"hfa_weights: needs one weight per group {self.hfa_first_group}..{self.hfa_groups}, "
                             f"got {len(self.hfa_weights)}")
        if self.hfa and self.hfa_first_group > self.hfa_groups:
            raise ValueError(f"hfa_first_group: must lie in 1..{self.hfa_groups}")
        if self.hfa and self.hfa_branch == "short" and not self.dual_branch:
            raise ValueError("hfa_branch: 'short' needs dual_branch on")
        if len(self.prompt_grid) != 2 or min(self.prompt_grid) < 1:
            raise ValueError("prompt_grid: needs [rows, cols], each at least 1")
        return self

    @property
    def num_prompts(self) -> int:
        """M: one prompt per region."""
        return self.prompt_grid[0] * self.prompt_grid[1]

    @classmethod
    def plain(cls) -> "FixClipConfig":
        """All modules off and no label smoothing: the wrapped open_clip CLIP trained with ClipLoss."""
        return cls(stretch=False, dual_branch=False, regional_prompts=False, hfa=False, label_smoothing=0.0)

    def check_fits(self, vision_layers: int, text_layers: int, patch_grid: tuple[int, int], base_context: int) -> None:
        """Raise ValueError naming the offending key when the config does not fit the backbone."""
        def check(ok: bool, key: str, why: str):
            if not ok:
                raise ValueError(f"fixclip.{key}: {why}")

        if self.stretch:
            check(base_context <= CLIP_CONTEXT, "stretch",
                  f"the base model already has {base_context} text positions (the stretch takes CLIP's "
                  f"{CLIP_CONTEXT} to {self.context_length(CLIP_CONTEXT)}, e.g. a Long-CLIP checkpoint has them); "
                  "set it to false to fine-tune this model as it is")
            check(self.stretch_keep < base_context - 1, "stretch_keep", f"must lie in (0, {base_context - 1})")
        if self.regional_prompts:
            rows, cols = patch_grid
            check(self.prompt_grid[0] <= rows and self.prompt_grid[1] <= cols, "prompt_grid",
                  f"more regions than the {rows} x {cols} patch grid has rows or columns")
            check(self.prompt_start_layer <= vision_layers, "prompt_start_layer", f"must lie in 1..{vision_layers}")
        if self.hfa:
            g = self.hfa_groups
            check(vision_layers % g == 0 and text_layers % g == 0, "hfa_groups",
                  f"must divide both tower depths ({vision_layers}, {text_layers})")

    def context_length(self, base_context: int) -> int:
        """Text positions after the stretch: keep + ratio * (base - keep), e.g. 20 + 4 * 57 = 248."""
        if not self.stretch:
            return base_context
        return self.stretch_keep + self.stretch_ratio * (base_context - self.stretch_keep)


class LongClipConfig(MethodSection):
    """Long-CLIP: stretch + short caption <-> image features on the batch's top-k components. The stretch keys (keep,
    ratio, padding trim) are read from the ``fixclip`` section, so all methods share one text tower set-up."""

    reads: ClassVar[dict[str, tuple[str, ...]]] = {"fixclip": STRETCH_KEYS}

    pca_components: Optional[int] = Field(None, ge=1)
    """K; null: the paper's 32 of 512 dimensions scaled to the embedding (4 of 64): the model's width. No reduction
    at all once k >= min(per-rank batch - 1, width)."""
    label_smoothing: float = Field(0.1, ge=0.0, lt=1.0)
    """Label smoothing of its losses."""

    def components(self, embed_dim: int) -> int:
        """k for an embedding of ``embed_dim`` dimensions."""
        if self.pca_components is None:
            return max(1, round(32 * embed_dim / 512))
        return self.pca_components


class HolisticConfig(MethodSection):
    """Holistic CLIP: K image embeddings (extra CLS tokens) <-> K captions from K prompts. The stretch keys are read
    from the ``fixclip`` section."""

    reads: ClassVar[dict[str, tuple[str, ...]]] = {"fixclip": STRETCH_KEYS}
    reads_all_captions: ClassVar[bool] = True
    captions_key: ClassVar[str] = "holistic.captions_per_image"

    num_branches: int = Field(3, ge=1)
    """K_img: class tokens, hence embeddings per image (the public repo's default 3)."""
    captions_per_image: int = Field(3, ge=1)
    """K_txt; needs caption.captions_per_image >= this (shards hold long_0..long_{K-1}.txt): prompts, hence captions
    per image."""
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0)
    """Label smoothing of its loss; the public loss uses none."""
    branch_similarity_margin: Optional[float] = Field(0.7, ge=-1.0, le=1.0)
    """Hinge on the mean cosine between an image's branches; null: off."""

    def captions(self, caption_pool: int) -> int:
        return self.captions_per_image
