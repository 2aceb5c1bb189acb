"""Regional prompts with a unidirectional attention mask (FIX-CLIP, Sec. 3.3).

Sequence layout inside an image layer that carries prompts: [CLS, patch_1..patch_N, prompt_1..prompt_M].
Mask rule (additive, 0 = may attend, -inf = may not):
  * CLS attends to every token;
  * a patch attends to CLS and to all patches (never to prompts, so patch features are those of plain CLIP);
  * prompt j attends to itself and to the patches of its image region.
The paper says each prompt attends to "its" patches without saying which; our choice: the image is split into a
rows x cols grid of regions (prompt j is region j in raster order) and a patch belongs to the region that holds its
centre. Regions are then 2-D blocks aligned with the image (the toy world's 3 x 3 cells over its 8 x 8 patches
give blocks of 3, 2 and 3 patches per side), not strips of consecutive raster patches.
"""
import torch
from torch import nn


def patch_regions(patch_grid: tuple[int, int], prompt_grid: tuple[int, int]) -> torch.Tensor:
    """Long [rows_p * cols_p]: the region (raster index in ``prompt_grid``) of every patch, by its centre."""
    (height, width), (rows, cols) = patch_grid, prompt_grid
    row = ((torch.arange(height) + 0.5) * rows / height).floor().long()
    col = ((torch.arange(width) + 0.5) * cols / width).floor().long()
    return (row[:, None] * cols + col[None, :]).flatten()


def raster_regions(num_patches: int, num_prompts: int) -> torch.Tensor:
    """Long [N]: the paper's regions, consecutive raster blocks of N / M patches (patch i in block floor(i M / N))."""
    return torch.arange(num_patches) * num_prompts // num_patches


def regional_attention_mask(patch_grid: tuple[int, int], prompt_grid: tuple[int, int],
                            regions: str = "grid") -> torch.Tensor:
    """Float [1 + N + M, 1 + N + M] additive mask implementing the rule above (row = query, column = key);
    ``regions`` "grid" (2-D blocks, ``patch_regions``) or "raster" (``raster_regions``)."""
    m = prompt_grid[0] * prompt_grid[1]
    region = (patch_regions(patch_grid, prompt_grid) if regions == "grid"
              else raster_regions(patch_grid[0] * patch_grid[1], m))
    n = region.numel()
    size = 1 + n + m
    allowed = torch.zeros(size, size, dtype=torch.bool)
    allowed[0, :] = True
    allowed[1:1 + n, :1 + n] = True
    prompt_rows = torch.arange(m)
    allowed[1 + n:, 1:1 + n] = prompt_rows[:, None] == region[None, :]
    allowed[1 + n + prompt_rows, 1 + n + prompt_rows] = True
    mask = torch.zeros(size, size)
    return mask.masked_fill_(~allowed, float("-inf"))


class RegionalPrompts(nn.Module):
    """M zero-initialised prompt tokens per image layer l..L, dropped before pooling.

    Our choice where the paper is silent (``carried``): each layer adds its fresh parameters to the prompt outputs
    of the layer before (at layer l they enter alone). With ``carried=False`` (the paper's "fresh" prompts, as in
    deep visual prompt tuning) they replace them, and a prompt's own attention (to itself and its region) never
    reaches the output: only CLS reads prompts, and it reads fresh parameters. Carried forward, each prompt
    accumulates its region's features, which CLS then reads.
    """

    def __init__(self, num_layers: int, num_prompts: int, width: int, carried: bool = True):
        super().__init__()
        self.tokens = nn.Parameter(torch.zeros(num_layers, num_prompts, width))
        self.carried = carried

    def insert(self, tokens: torch.Tensor, layer: int, keep: int) -> torch.Tensor:
        """Tokens after ``keep`` (CLS + patches) are the previous layer's prompt outputs, if any: add this layer's
        prompts to them (``carried``; else drop them), or append this layer's prompts at the first prompt layer."""
        prompts = self.tokens[layer].to(tokens.dtype).unsqueeze(0).expand(tokens.shape[0], -1, -1)
        if self.carried and tokens.shape[1] > keep:
            prompts = tokens[:, keep:] + prompts
        return torch.cat([tokens[:, :keep], prompts], dim=1)
