import torch

from fixclip.config import FixClipConfig
from fixclip.masking import MaskEmbedding, random_patch_mask
from fixclip.model import FixClip
from tests.fixclip.helpers import batch, tiny_clip


def test_random_mask_exact_count_and_seeded():
    a = random_patch_mask(16, 64, 0.75, torch.Generator().manual_seed(3))
    b = random_patch_mask(16, 64, 0.75, torch.Generator().manual_seed(3))
    c = random_patch_mask(16, 64, 0.75, torch.Generator().manual_seed(4))
    assert a.dtype == torch.bool and a.shape == (16, 64)
    assert torch.equal(a.sum(1), torch.full((16,), 48))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert len({tuple(row.tolist()) for row in a}) == 16  # fresh draw per image


def test_mask_embedding_replaces_only_masked_patches():
    embed = MaskEmbedding(4)
    assert torch.count_nonzero(embed.embedding) == 0
    with torch.no_grad():
        embed.embedding.fill_(7.0)
    tokens = torch.randn(2, 1 + 3, 4)
    mask = torch.tensor([[True, False, True], [False, False, True]])
    out = embed(tokens, mask)
    assert torch.equal(out[:, 0], tokens[:, 0])  # class token untouched
    for b in range(2):
        for p in range(3):
            expected = torch.full((4,), 7.0) if mask[b, p] else tokens[b, 1 + p]
            assert torch.equal(out[b, 1 + p], expected)


def test_masked_branch_input_in_the_model():
    """The masked branch enters ln_pre with 75% of patch slots equal to the mask embedding, the rest raw."""
    cfg = FixClipConfig.plain().with_(stretch=True, dual_branch=True, mask_ratio=0.75)
    model = FixClip(tiny_clip(), cfg)
    with torch.no_grad():
        model.mask_embedding.embedding.normal_()
    seen = []
    model.clip.visual.ln_pre.register_forward_pre_hook(lambda mod, args: seen.append(args[0]))
    images, long_tokens, short_tokens = batch(4)
    model(images, long_tokens, short_tokens)
    raw, masked = seen[0].split(4)
    is_mask = (masked[:, 1:] == model.mask_embedding.embedding).all(-1)
    assert torch.equal(is_mask.sum(1), torch.full((4,), 48))
    assert torch.equal(masked[:, 1:][~is_mask], raw[:, 1:][~is_mask])
    assert torch.equal(masked[:, 0], raw[:, 0])


def test_zero_mask_token_gives_finite_outputs_and_gradient():
    cfg = FixClipConfig.plain().with_(stretch=True, dual_branch=True)
    model = FixClip(tiny_clip(), cfg)
    out = model(*batch(4))
    assert all(torch.isfinite(out[k]).all() for k in ("image_features", "short_image_features"))
    assert not torch.allclose(out["image_features"], out["short_image_features"])
    out["short_image_features"].sum().backward()
    grad = model.mask_embedding.embedding.grad
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
