"""Switches and hyper-parameters of the FIX-CLIP modules (one dataclass, validated before any work)."""
from dataclasses import dataclass, field, replace
from typing import Tuple


@dataclass(frozen=True)
class FixClipConfig:
    """Every FIX-CLIP module can be switched off independently (the paper's ablation table).

    Where the paper is silent the defaults are our choice, sized for the tiny 4-layer, 64-patch base CLIP
    in ``assets/base_clip`` (see DESIGN.md "Unknown in the paper").
    """

    # Text stretch (Long-CLIP knowledge-preserving interpolation), 77 -> keep + ratio * (77 - keep) = 248.
    stretch: bool = True
    stretch_keep: int = 20
    stretch_ratio: int = 4
    # Drop trailing padding columns of a token batch before the text tower. Exact under CLIP's causal mask
    # (the pooled EOT token never attends to later positions); only speed changes.
    trim_text_padding: bool = True

    # Dual branch: short caption <-> masked image (L_short) next to long caption <-> raw image (L_long).
    dual_branch: bool = True
    mask_ratio: float = 0.75
    mask_seed: int = 0

    # Regional prompts: M prompts from image layer l (1-based, paper notation); every layer l..L adds fresh
    # parameters to the prompt outputs of the layer before (see regional_prompts.RegionalPrompts).
    regional_prompts: bool = True
    num_prompts: int = 8
    prompt_start_layer: int = 3

    # Hierarchical feature alignment: G groups of S = L / G layers, loss on groups K..G (1-based) weighted w_i.
    hfa: bool = True
    hfa_groups: int = 2
    hfa_first_group: int = 1
    hfa_weights: Tuple[float, ...] = field(default=(0.5, 0.5))
    hfa_sigma: float = 1.0
    hfa_branch: str = "long"  # "long": long caption <-> raw image; "short": short caption <-> masked image

    # Loss
    label_smoothing: float = 0.1

    @classmethod
    def plain(cls) -> "FixClipConfig":
        """All modules off and no label smoothing: the wrapped open_clip CLIP trained with ClipLoss."""
        return cls(stretch=False, dual_branch=False, regional_prompts=False, hfa=False, label_smoothing=0.0)

    def with_(self, **changes) -> "FixClipConfig":
        return replace(self, **changes)

    def validate(self, vision_layers: int, text_layers: int, num_patches: int, base_context: int) -> None:
        """Raise ValueError naming the offending key when the config does not fit the backbone."""
        def check(ok: bool, key: str, why: str):
            if not ok:
                raise ValueError(f"fixclip.{key}: {why}")

        check(0.0 <= self.label_smoothing < 1.0, "label_smoothing", "must lie in [0, 1)")
        if self.stretch:
            check(0 < self.stretch_keep < base_context - 1, "stretch_keep", f"must lie in (0, {base_context - 1})")
            check(self.stretch_ratio >= 1, "stretch_ratio", "must be >= 1")
        if self.dual_branch:
            check(0.0 <= self.mask_ratio < 1.0, "mask_ratio", "must lie in [0, 1)")
        if self.regional_prompts:
            check(self.num_prompts >= 1 and num_patches % self.num_prompts == 0, "num_prompts",
                  f"must divide the {num_patches} patches")
            check(1 <= self.prompt_start_layer <= vision_layers, "prompt_start_layer",
                  f"must lie in 1..{vision_layers}")
        if self.hfa:
            g = self.hfa_groups
            check(g >= 1 and vision_layers % g == 0 and text_layers % g == 0, "hfa_groups",
                  f"must divide both tower depths ({vision_layers}, {text_layers})")
            check(1 <= self.hfa_first_group <= g, "hfa_first_group", f"must lie in 1..{g}")
            check(len(self.hfa_weights) == g - self.hfa_first_group + 1, "hfa_weights",
                  "needs one weight per group K..G")
            check(self.hfa_sigma > 0, "hfa_sigma", "must be > 0")
            check(self.hfa_branch in ("long", "short"), "hfa_branch", "must be 'long' or 'short'")
            check(self.hfa_branch == "long" or self.dual_branch, "hfa_branch",
                  "'short' needs dual_branch on")

    def context_length(self, base_context: int) -> int:
        """Text positions after the stretch: keep + ratio * (base - keep), e.g. 20 + 4 * 57 = 248."""
        if not self.stretch:
            return base_context
        return self.stretch_keep + self.stretch_ratio * (base_context - self.stretch_keep)
