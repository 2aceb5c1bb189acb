"""Long-CLIP (Zhang et al., ECCV 2024) as model additions plus loss on top of ``FixClip``.

* Knowledge-preserving stretch of the text positions (77 -> 248, rows 0..keep-1 frozen): ``FixClip`` with every
  FIX-CLIP module off except the stretch (``stretched_text_config``), so the stretch is the very one FIX-CLIP uses.
* Primary-component matching: the short caption is matched against the image features reduced to the top-k
  principal components of the batch,

      L = InfoNCE(I, T_long) + InfoNCE(PCA_k(I), T_short),   both with label smoothing 0.1.

Facts taken from the public code, github.com/beichenzbc/Long-CLIP (read, not copied):
  * model/model_longclip.py, ``CLIP.PCA``: the features are centred with the batch mean, decomposed by SVD of the
    centred matrix (in float32), projected onto the top-k right singular vectors and back, and the mean is added
    back; the result is not re-normalised.
  * model/model_longclip.py, ``CLIP.forward``: the PCA runs on the L2-normalised image features of the rank's own
    batch, before ``torch.distributed.nn.all_gather``; k = 32 (of 512 dimensions); both terms use
    ``label_smoothing=0.1``.
  * train/train.py: the two terms are summed with weight 1 (``loss = loss_long + loss_short``).
  * model/longclip.py, ``load_from_clip``: positions 0..19 copied and frozen, the rest interpolated 4x and trained
    (what ``text_stretch.StretchedPositions`` implements).
"""
from pathlib import Path
from typing import Dict, Union

import torch
import torch.nn.functional as F
from torch import nn

from .base_model import ModelRef
from .checkpoint_formats import load_clip
from .config import FixClipConfig, LongClipConfig
from .loss import info_nce
from .model import FixClip
from .trainable import Method


def stretched_text_config(fixclip: FixClipConfig = FixClipConfig()) -> FixClipConfig:
    """A ``FixClip`` config with only Long-CLIP's stretch on; its keys come from the ``fixclip`` section."""
    return FixClipConfig.plain().with_(stretch=True, stretch_keep=fixclip.stretch_keep,
                                       stretch_ratio=fixclip.stretch_ratio,
                                       trim_text_padding=fixclip.trim_text_padding)


def principal_components(features: torch.Tensor, k: int) -> torch.Tensor:
    """[B, D] features rebuilt from the top-k principal components of the batch: mean + P_k (features - mean).

    The centred batch has rank at most min(B - 1, D); for k at or above that the rebuild is exact and the features
    are returned unchanged (no SVD is run).
    """
    batch, dim = features.shape
    if k >= min(batch - 1, dim):
        return features
    compute_dtype = torch.promote_types(features.dtype, torch.float32)  # SVD in float32 at least, as Long-CLIP
    x = features.to(compute_dtype)
    mean = x.mean(dim=0, keepdim=True)
    centred = x - mean
    _, _, vh = torch.linalg.svd(centred, full_matrices=False)
    basis = vh[:k].T  # [D, k]
    return (centred @ basis @ basis.T + mean).to(features.dtype)


class LongClip(FixClip):
    """Long-CLIP: stretched text tower; ``forward`` adds the PCA-reduced image features for the short caption."""

    def __init__(self, clip: nn.Module, cfg: LongClipConfig = LongClipConfig(),
                 fixclip: FixClipConfig = FixClipConfig()):
        super().__init__(clip, stretched_text_config(fixclip))
        self.method_cfg = cfg

    @classmethod
    def from_pretrained(cls, model: ModelRef, weights: Union[str, Path], cfg: LongClipConfig = LongClipConfig(),
                        fixclip: FixClipConfig = FixClipConfig()) -> "LongClip":
        return cls(load_clip(model, weights), cfg, fixclip)

    def forward(self, images: torch.Tensor, long_tokens: torch.Tensor,
                short_tokens: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Features for ``LongClipLoss``: image / long text / short text L2-normalised, and ``short_image_features``,
        the normalised image features reduced to the batch's top-k principal components (not re-normalised)."""
        out = super().forward(images, long_tokens)
        out["short_text_features"] = F.normalize(self.encode_text(short_tokens), dim=-1)
        k = self.method_cfg.components(out["image_features"].shape[1])
        out["short_image_features"] = principal_components(out["image_features"], k)
        return out


class LongClipLoss(nn.Module):
    """Maps the output dict of ``LongClip.forward`` to {"loss": long + short, "long": .., "short": ..}.

    Under torch.distributed the features are gathered inside ``info_nce``, after each rank's own PCA, as in
    Long-CLIP; the PCA basis is therefore that of the rank's batch, not of the global one.
    """

    def __init__(self, label_smoothing: float = 0.1, rank: int = 0, world_size: int = 1):
        super().__init__()
        self.label_smoothing = label_smoothing
        self.rank = rank
        self.world_size = world_size

    @classmethod
    def from_config(cls, cfg: LongClipConfig, rank: int = 0, world_size: int = 1) -> "LongClipLoss":
        return cls(cfg.label_smoothing, rank, world_size)

    def forward(self, out: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        scale = out["logit_scale"]
        long = info_nce(out["image_features"], out["text_features"], scale, self.label_smoothing,
                        self.rank, self.world_size)
        short = info_nce(out["short_image_features"], out["short_text_features"], scale, self.label_smoothing,
                         self.rank, self.world_size)
        return {"loss": long + short, "long": long, "short": short}


# train.method: longclip (fixclip.methods); built as LongClip(clip, section, the fixclip section)
METHOD = Method(LongClip, LongClipLoss, LongClip)
