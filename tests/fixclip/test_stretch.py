import numpy as np
import pytest
import torch

from fixclip.config import FixClipConfig
from fixclip.model import FixClip
from fixclip.text_stretch import StretchedPositions, long_tokenizer, stretch_positions
from tests.fixclip.helpers import captions, tiny_clip


def _table(length=77, width=6):
    return torch.randn(length, width, generator=torch.Generator().manual_seed(1))


def test_stretch_length_and_kept_rows_bit_identical():
    table = _table()
    stretched = stretch_positions(table, keep=20, ratio=4)
    assert stretched.shape == (4 * 77 - 3 * 20, 6) == (248, 6)
    assert torch.equal(stretched[:20], table[:20])


def test_stretch_is_linear_interpolation_through_the_knots():
    table = _table().double()
    stretched = stretch_positions(table, keep=20, ratio=4)
    for k in range(57):  # knots: position 20 + 4k holds the original position 20 + k
        assert torch.equal(stretched[20 + 4 * k], table[20 + k])
    source = np.arange(20, 77)
    for p in range(20, 245):
        t = 20 + (p - 20) / 4
        expected = [np.interp(t, source, table[20:, d].numpy()) for d in range(table.shape[1])]
        np.testing.assert_allclose(stretched[p].numpy(), expected, rtol=0, atol=1e-12)
    slope = table[76] - table[75]
    for r in (1, 2, 3):  # tail: the last segment extrapolated to reach 248
        torch.testing.assert_close(stretched[244 + r], table[76] + r / 4 * slope, rtol=0, atol=1e-12)


@pytest.mark.parametrize("keep,ratio", [(5, 2), (10, 3), (1, 4)])
def test_stretch_other_shapes(keep, ratio):
    table = _table(length=16)
    stretched = stretch_positions(table, keep, ratio)
    assert stretched.shape[0] == keep + ratio * (16 - keep)
    assert torch.equal(stretched[:keep], table[:keep])
    torch.testing.assert_close(stretched[keep::ratio][:16 - keep], table[keep:])


def test_kept_rows_survive_adamw_with_weight_decay():
    table = _table(width=8)
    positions = StretchedPositions(table, keep=20, ratio=4)
    assert [name for name, _ in positions.named_parameters()] == ["stretched"]
    before = positions(248).detach().clone()
    optim = torch.optim.AdamW(positions.parameters(), lr=0.1, weight_decay=0.5)
    for _ in range(3):
        positions(248).pow(2).sum().backward()
        optim.step()
        optim.zero_grad()
    after = positions(248).detach()
    assert torch.equal(after[:20], before[:20])
    assert not torch.equal(after[20:], before[20:])


def test_tokenizer_and_model_use_positions_beyond_77():
    tokens = long_tokenizer(248)(captions(2, long=True))
    assert tokens.shape == (2, 248)
    assert int(tokens.argmax(-1).min()) > 77  # the captions really are long and are not cut at 77
    model = FixClip(tiny_clip(), FixClipConfig.plain().with_(stretch=True)).eval()
    assert model.context_length == 248
    altered = tokens.clone()
    rows = torch.arange(2)
    altered[rows, tokens.argmax(-1) - 1] = 320  # change the last word, beyond position 77
    with torch.no_grad():
        assert not torch.allclose(model.encode_text(tokens), model.encode_text(altered))
    with pytest.raises(ValueError, match="context length"):
        model.encode_text(torch.zeros(1, 249, dtype=torch.long))
