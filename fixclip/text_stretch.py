"""Long-CLIP's knowledge-preserving stretch of the text positional embedding (Long-CLIP, Sec. 3.1).

A 77-position table P becomes keep + ratio * (77 - keep) positions (248 for keep 20, ratio 4):

    P'(p) = P(p)                                  for p < keep          (copied, frozen while training)
    P'(p) = (1 - a) P(i) + a P(i + 1)             for p >= keep, with t = keep + (p - keep) / ratio,
                                                  i = min(floor(t), 75), a = t - i

so positions keep..76 land on every ratio-th slot (the knots) with linear interpolation in between, and the last
ratio - 1 slots (t > 76) extrapolate the final segment.
"""
import torch
from open_clip.tokenizer import SimpleTokenizer
from torch import nn


def stretch_positions(table: torch.Tensor, keep: int = 20, ratio: int = 4) -> torch.Tensor:
    """Return the stretched [keep + ratio * (L - keep), D] table built from an [L, D] table."""
    length = table.shape[0]
    target = torch.arange(keep, keep + ratio * (length - keep), dtype=torch.float64)
    t = keep + (target - keep) / ratio
    left = t.floor().long().clamp(max=length - 2)
    frac = (t - left).to(table.dtype).unsqueeze(1)
    tail = (1 - frac) * table[left] + frac * table[left + 1]
    return torch.cat([table[:keep], tail], dim=0)


class StretchedPositions(nn.Module):
    """Stretched positional table whose first ``keep`` rows are a buffer: no gradient, no weight decay.

    Splitting the table (instead of zeroing gradient rows with a hook) keeps rows 0..keep-1 bit-identical under any
    optimizer, including AdamW's decoupled weight decay, which would shrink a hooked row with zero gradient.
    """

    def __init__(self, table: torch.Tensor, keep: int = 20, ratio: int = 4):
        super().__init__()
        stretched = stretch_positions(table.detach(), keep, ratio)
        self.register_buffer("kept", stretched[:keep].clone())
        self.stretched = nn.Parameter(stretched[keep:].clone())

    def forward(self, length: int) -> torch.Tensor:
        """The first ``length`` rows of the table."""
        return torch.cat([self.kept, self.stretched], dim=0)[:length]

    @property
    def num_positions(self) -> int:
        return self.kept.shape[0] + self.stretched.shape[0]


def long_tokenizer(context_length: int = 248) -> SimpleTokenizer:
    """open_clip's BPE tokenizer padding/truncating to ``context_length`` tokens (shipped vocab, no download)."""
    return SimpleTokenizer(context_length=context_length)
