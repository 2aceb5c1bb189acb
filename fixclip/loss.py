"""FIX-CLIP objective (FIX-CLIP, Eq. for the total loss):

    L = sum_{i=K..G} w_i L_mi + L_short + L_long

every term a symmetric InfoNCE with label smoothing (0.1 as in Long-CLIP):

    L_nce(I, T) = 1/2 [ CE_s(tau * I T^T, y) + CE_s(tau * T I^T, y) ],  y = diag, CE_s = smoothed cross-entropy.

L_long and L_short use the model's logit scale tau; each L_mi its own learnable one
(``FixClip.hfa_logit_scale``).

Under torch.distributed the features of all ranks are gathered with gradients (open_clip's ``gather_features``), so
every rank computes the loss of the global batch; averaging parameter gradients over ranks (DDP) then yields the
gradient of that global loss.
"""
from typing import Dict, Optional, Sequence

import torch
import torch.nn.functional as F
from open_clip.loss import gather_features
from torch import nn


def info_nce(image: torch.Tensor, text: torch.Tensor, logit_scale: torch.Tensor, label_smoothing: float = 0.0,
             rank: int = 0, world_size: int = 1) -> torch.Tensor:
    """Symmetric InfoNCE over L2-normalised features [B, D]; global over ranks when world_size > 1."""
    if world_size > 1:
        image, text = gather_features(image, text, gather_with_grad=True, rank=rank, world_size=world_size)
    logits_per_image = logit_scale * image @ text.T
    logits_per_text = logit_scale * text @ image.T
    labels = torch.arange(image.shape[0], device=image.device)
    return (F.cross_entropy(logits_per_image, labels, label_smoothing=label_smoothing)
            + F.cross_entropy(logits_per_text, labels, label_smoothing=label_smoothing)) / 2


class FixClipLoss(nn.Module):
    """Maps the output dict of ``FixClip.forward`` to {"loss": total, "long": .., "short": .., "hfa_<k>": ..}."""

    def __init__(self, label_smoothing: float = 0.1, hfa_weights: Sequence[float] = (), hfa_first_group: int = 1,
                 rank: int = 0, world_size: int = 1):
        super().__init__()
        self.label_smoothing = label_smoothing
        self.hfa_weights = tuple(hfa_weights)
        self.hfa_first_group = hfa_first_group
        self.rank = rank
        self.world_size = world_size

    @classmethod
    def from_config(cls, cfg, rank: int = 0, world_size: int = 1) -> "FixClipLoss":
        return cls(cfg.label_smoothing, cfg.hfa_weights if cfg.hfa else (), cfg.hfa_first_group, rank, world_size)

    def _nce(self, image: torch.Tensor, text: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
        return info_nce(image, text, logit_scale, self.label_smoothing, self.rank, self.world_size)

    def forward(self, out: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        scale = out["logit_scale"]
        parts = {"long": self._nce(out["image_features"], out["text_features"], scale)}
        total = parts["long"]
        short_image: Optional[torch.Tensor] = out.get("short_image_features")
        if short_image is not None:
            parts["short"] = self._nce(short_image, out["short_text_features"], scale)
            total = total + parts["short"]
        if self.hfa_weights:
            hfa = zip(self.hfa_weights, out["hfa_image"], out["hfa_text"], out["hfa_logit_scale"], strict=True)
        else:
            hfa = ()
        for k, (weight, image, text, hfa_scale) in enumerate(hfa, self.hfa_first_group):
            parts[f"hfa_{k}"] = self._nce(image, text, hfa_scale)
            total = total + weight * parts[f"hfa_{k}"]
        parts["loss"] = total
        return parts
