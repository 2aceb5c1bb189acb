"""Masked image branch: a learnable mask embedding replaces a random share of patch tokens (FIX-CLIP, Sec. 3.2).

Where: after patch embedding + class token + positional embedding, before ``ln_pre`` and the transformer.
Why there: a masked slot then carries neither image content nor position, so the short caption is matched against
what is still visible; and because tokens are replaced, not dropped, the sequence keeps its 1 + N layout, so the
regional prompts' regions and the attention mask are the same for the raw and the masked branch and both can
run as one batch.
"""
import torch
from torch import nn


def random_patch_mask(batch: int, num_patches: int, ratio: float, generator: torch.Generator) -> torch.Tensor:
    """Bool [batch, num_patches]: exactly round(ratio * num_patches) True per row, drawn from ``generator``."""
    num_masked = round(ratio * num_patches)
    noise = torch.rand(batch, num_patches, generator=generator, device=generator.device)
    chosen = noise.argsort(dim=1)[:, :num_masked]
    mask = torch.zeros(batch, num_patches, dtype=torch.bool, device=generator.device)
    return mask.scatter_(1, chosen, True)


class MaskEmbedding(nn.Module):
    """One learnable token, zero-initialised, written over the masked patch positions."""

    def __init__(self, width: int):
        super().__init__()
        self.embedding = nn.Parameter(torch.zeros(width))

    def forward(self, tokens: torch.Tensor, patch_mask: torch.Tensor) -> torch.Tensor:
        """tokens [B, 1 + N, D] (class token first), patch_mask bool [B, N] -> tokens with masked patches replaced."""
        slot = torch.cat([patch_mask.new_zeros(patch_mask.shape[0], 1), patch_mask], dim=1).unsqueeze(-1)
        return torch.where(slot, self.embedding.to(tokens.dtype), tokens)
