import copy

import pytest
import torch

from fixclip.config import FixClipConfig
from fixclip.longclip import LongClip, LongClipConfig, LongClipLoss, principal_components, stretched_text_config
from fixclip.loss import info_nce
from fixclip.model import FixClip
from tests.fixclip.helpers import batch, tiny_clip


def _features(n, d, seed=0, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(n, d, generator=gen) + 3 * torch.randn(1, d, generator=gen)).to(dtype)  # off-centre batch


def _svd_rebuild(x, k):
    mean = x.mean(dim=0, keepdim=True)
    u, s, vh = torch.linalg.svd(x - mean, full_matrices=False)
    return (u[:, :k] * s[:k]) @ vh[:k] + mean


@pytest.mark.parametrize("k", [1, 3, 7])
def test_reduction_equals_explicit_svd_rebuild_and_has_rank_k(k):
    x = _features(12, 16)
    reduced = principal_components(x, k)
    torch.testing.assert_close(reduced, _svd_rebuild(x, k))
    assert torch.linalg.matrix_rank(reduced - reduced.mean(dim=0)) == k


@pytest.mark.parametrize("n, d, k", [(5, 16, 4), (5, 16, 32), (10, 3, 3)])
def test_k_at_or_above_the_centred_rank_returns_the_features(n, d, k):
    x = _features(n, d)
    assert torch.equal(principal_components(x, k), x)
    torch.testing.assert_close(_svd_rebuild(x, min(n - 1, d)), x)  # what the shortcut stands for


def test_reduction_keeps_the_input_dtype():
    x = _features(12, 16, dtype=torch.bfloat16)
    reduced = principal_components(x, 3)
    assert reduced.dtype == torch.bfloat16
    torch.testing.assert_close(reduced.float(), _svd_rebuild(x.float(), 3), atol=0.05, rtol=0.02)


def test_auto_k_is_the_papers_share_of_the_embedding_width():
    """k = 32 of 512 dimensions in the paper: 4 of the toy CLIP's 64, 48 of ViT-L/14's 768; an int is taken as is."""
    assert [LongClipConfig().components(d) for d in (64, 512, 768)] == [4, 32, 48]
    assert LongClipConfig(pca_components=7).components(512) == 7
    model = LongClip(tiny_clip())
    out = model(*batch(8))
    torch.testing.assert_close(out["short_image_features"], principal_components(out["image_features"], 4))


def test_stretch_keys_come_from_the_fixclip_section_and_the_stretch_is_always_on():
    model = LongClip(tiny_clip(), fixclip=FixClipConfig(stretch=False, stretch_keep=10, stretch_ratio=2))
    assert model.context_length == 10 + 2 * (77 - 10)
    assert model.text_positions.kept.shape[0] == 10
    assert stretched_text_config().model_dump() == FixClipConfig.plain().with_(stretch=True).model_dump()


def test_forward_gives_pca_reduced_image_features_for_the_short_caption():
    model = LongClip(tiny_clip(), LongClipConfig(pca_components=3))
    images, long_tokens, short_tokens = batch(8)
    out = model(images, long_tokens, short_tokens)
    assert set(out) == {"image_features", "text_features", "short_text_features", "short_image_features",
                        "logit_scale"}
    for key in ("image_features", "text_features", "short_text_features"):
        torch.testing.assert_close(out[key].norm(dim=-1), torch.ones(8))
    torch.testing.assert_close(out["short_image_features"], principal_components(out["image_features"], 3))
    assert not torch.allclose(out["short_image_features"], out["image_features"])


def test_text_tower_and_image_embedding_equal_fixclip_with_only_the_stretch():
    clip = tiny_clip().eval()
    ours = LongClip(copy.deepcopy(clip)).eval()
    reference = FixClip(copy.deepcopy(clip), FixClipConfig.plain().with_(stretch=True)).eval()
    images, long_tokens, short_tokens = batch(4)
    with torch.no_grad():
        assert torch.equal(ours.encode_text(long_tokens), reference.encode_text(long_tokens))
        assert torch.equal(ours.encode_image(images), reference.encode_image(images))


def test_loss_is_long_plus_short_infonce_with_label_smoothing():
    model = LongClip(tiny_clip(), LongClipConfig(pca_components=3))
    out = model(*batch(8))
    loss_fn = LongClipLoss.from_config(model.method_cfg)
    assert loss_fn.label_smoothing == 0.1
    parts = loss_fn(out)
    assert set(parts) == {"loss", "long", "short"}
    scale = out["logit_scale"]
    long = info_nce(out["image_features"], out["text_features"], scale, 0.1)
    short = info_nce(out["short_image_features"], out["short_text_features"], scale, 0.1)
    torch.testing.assert_close(parts["long"], long)
    torch.testing.assert_close(parts["short"], short)
    torch.testing.assert_close(parts["loss"], long + short)


def test_frozen_positions_get_no_gradient_and_the_loss_reaches_both_towers():
    torch.manual_seed(0)
    model = LongClip(tiny_clip(), LongClipConfig(pca_components=3))
    params = dict(model.named_parameters())
    assert "text_positions.kept" not in params and not model.text_positions.kept.requires_grad
    before = model.text_positions(248).detach().clone()
    optim = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.2)
    loss_fn = LongClipLoss()

    short = loss_fn(model(*batch(8)))["short"]  # through the SVD alone
    short.backward()
    for name in ("clip.visual.conv1.weight", "clip.token_embedding.weight"):
        grad = params[name].grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0, name
    assert params["text_positions.stretched"].grad.abs().sum() == 0  # short captions sit in the frozen rows
    optim.zero_grad()

    parts = loss_fn(model(*batch(8, seed=1)))
    assert torch.isfinite(parts["loss"])
    parts["loss"].backward()
    assert model.text_positions.kept.grad is None
    stretched_grad = params["text_positions.stretched"].grad
    assert torch.isfinite(stretched_grad).all() and stretched_grad.abs().sum() > 0
    assert params["clip.transformer.resblocks.0.attn.in_proj_weight"].grad.abs().sum() > 0
    optim.step()
    after = model.text_positions(248).detach()
    assert torch.equal(after[:20], before[:20])
    assert not torch.equal(after[20:], before[20:])
