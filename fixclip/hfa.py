"""Hierarchical feature alignment (FIX-CLIP, Sec. 3.4).

Per tower, take the CLS (image) or EOT (text) token h_1..h_L of every layer and split the L layers into G groups of
S = L / G consecutive layers.

  GTA (group token aggregation):  g_k = sum_{j=1..S} a_j h_{(k-1)S + j},  a_j = N(j; S, sigma) / sum_i N(i; S, sigma)
  GMF (group mapping function):   z_k = LayerNorm(Linear_k(g_k))      (one Linear + LayerNorm per group and tower)
  L_mk = InfoNCE(z_k^image, z_k^text),  summed as sum_{k=K..G} w_k L_mk  in fixclip.loss.

The Gaussian is centred on the group's last layer, so the deepest layer of each group weighs most.
"""
from typing import List

import torch
from torch import nn


def gaussian_group_weights(group_size: int, sigma: float = 1.0) -> torch.Tensor:
    """a_1..a_S: N(j; S, sigma) for j = 1..S, normalised to sum to 1."""
    j = torch.arange(1, group_size + 1, dtype=torch.float64)
    density = torch.exp(-0.5 * ((j - group_size) / sigma) ** 2)
    return (density / density.sum()).float()


class GroupAlignmentHead(nn.Module):
    """GTA + GMF for one tower: per-layer tokens -> one feature per group K..G."""

    def __init__(self, num_layers: int, groups: int, first_group: int, width: int, embed_dim: int,
                 sigma: float = 1.0):
        super().__init__()
        self.group_size = num_layers // groups
        self.first_group = first_group
        self.register_buffer("layer_weights", gaussian_group_weights(self.group_size, sigma), persistent=False)
        self.projections = nn.ModuleList(
            nn.Sequential(nn.Linear(width, embed_dim), nn.LayerNorm(embed_dim))
            for _ in range(first_group, groups + 1)
        )

    def forward(self, layer_tokens: List[torch.Tensor]) -> List[torch.Tensor]:
        """layer_tokens: L tensors [B, width] -> features [B, embed_dim] for groups K..G."""
        stacked = torch.stack(layer_tokens, dim=1)  # [B, L, width]
        grouped = stacked.unflatten(1, (-1, self.group_size))  # [B, G, S, width]
        aggregated = torch.einsum("bgsd,s->bgd", grouped, self.layer_weights.to(stacked.dtype))
        return [project(aggregated[:, k - 1]) for k, project in enumerate(self.projections, self.first_group)]
