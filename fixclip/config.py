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
    """Every FIX-CLIP module can be switched off independently (the paper's ablation table).

    Where the paper is silent the defaults are our choice, sized for the tiny 4-layer, 64-patch base CLIP
    in ``assets/base_clip`` (docs/methods.md, "Set-up choices where the paper is silent").
    """

    # Text stretch (Long-CLIP knowledge-preserving interpolation), 77 -> keep + ratio * (77 - keep) = 248.
    stretch: bool = True
    stretch_keep: int = Field(20, ge=1)
    stretch_ratio: int = Field(4, ge=1)
    # Drop trailing padding columns of a token batch before the text tower. Exact under CLIP's causal mask
    # (the pooled EOT token never attends to later positions); only speed changes.
    trim_text_padding: bool = True

    # Dual branch: short caption <-> masked image (L_short) next to long caption <-> raw image (L_long).
    dual_branch: bool = True
    mask_ratio: float = Field(0.75, ge=0.0, lt=1.0)
    mask_seed: int = 0  # per rank: mask_seed + rank; the generator's state is saved in checkpoints

    # Regional prompts: one prompt per image region of a rows x cols split (M = rows * cols), from image layer l
    # (1-based, paper notation); every layer l..L adds fresh parameters to the prompt outputs of the layer before
    # (see regional_prompts). A region is the 2-D block of patches whose centres fall in it: the toy world's 3 x 3
    # cells, or 2 x 2 quadrants of ViT-B/16's 14 x 14 grid.
    regional_prompts: bool = True
    prompt_grid: list[int] = [3, 3]
    prompt_start_layer: int = Field(3, ge=1)
    # The paper's variants (docs/methods.md, "Where we differ from the paper"): "raster" regions are consecutive
    # raster blocks of N / M patches; "fresh" prompts replace the previous layer's prompt outputs instead of adding.
    prompt_regions: Literal["grid", "raster"] = "grid"
    prompt_layers: Literal["carried", "fresh"] = "carried"
    # Prompts train at train.new_params_lr_scale times the learning rate, like the mask token and HFA heads.
    prompt_lr_scaled: bool = False

    # Hierarchical feature alignment: G groups of S = L / G layers, loss on groups K..G (1-based) weighted w_i.
    # Each group's loss has its own learnable logit scale (initialised at CLIP's 1 / 0.07: its heads start random,
    # and the main scale of a trained CLIP, ~100, would make their first losses huge), and for the first
    # hfa_warmup_steps steps the heads learn alone: their loss does not reach the backbone.
    hfa: bool = True
    hfa_groups: int = Field(2, ge=1)
    hfa_first_group: int = Field(2, ge=1)
    hfa_weights: list[float] = [1.0]
    hfa_sigma: float = Field(1.0, gt=0.0)
    hfa_branch: Literal["long", "short"] = "long"  # long: long caption <-> raw image; short: short <-> masked
    hfa_logit_scale_init: float = Field(14.29, gt=1.0)
    hfa_warmup_steps: int = Field(50, ge=0)

    # Loss (Long-CLIP's label smoothing)
    label_smoothing: float = Field(0.1, ge=0.0, lt=1.0)

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
    """The ``train.longclip`` section. The stretch keys (keep, ratio, padding trim) are read from the ``fixclip``
    section, so all methods share one text tower set-up."""

    reads: ClassVar[dict[str, tuple[str, ...]]] = {"fixclip": STRETCH_KEYS}

    # k; null scales the paper's 32 of 512 embedding dimensions to the model's width (4 of the toy CLIP's 64).
    # No reduction at all once k >= min(per-rank batch - 1, width).
    pca_components: Optional[int] = Field(None, ge=1)
    label_smoothing: float = Field(0.1, ge=0.0, lt=1.0)

    def components(self, embed_dim: int) -> int:
        """k for an embedding of ``embed_dim`` dimensions."""
        if self.pca_components is None:
            return max(1, round(32 * embed_dim / 512))
        return self.pca_components


class HolisticConfig(MethodSection):
    """The ``train.holistic`` section. The stretch keys are read from the ``fixclip`` section."""

    reads: ClassVar[dict[str, tuple[str, ...]]] = {"fixclip": STRETCH_KEYS}
    reads_all_captions: ClassVar[bool] = True
    captions_key: ClassVar[str] = "holistic.captions_per_image"

    num_branches: int = Field(3, ge=1)  # K_img: class tokens, hence embeddings per image (the repo's default 3)
    captions_per_image: int = Field(3, ge=1)  # K_txt: prompts, hence captions per image
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0)  # the public loss uses none
    # Hinge on the mean cosine between different branches of an image; null switches it off.
    branch_similarity_margin: Optional[float] = Field(0.7, ge=-1.0, le=1.0)

    def captions(self, caption_pool: int) -> int:
        return self.captions_per_image
