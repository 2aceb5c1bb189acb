import copy
import functools

import open_clip
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from fixclip.config import FixClipConfig
from fixclip.holistic import (HolisticClip, HolisticConfig, HolisticLoss, assign_branches, branch_attention_mask,
                              caption_nce)
from fixclip.loss import info_nce
from fixclip.model import FixClip
from tests.conftest import free_port
from tests.fixclip.helpers import batch, captions, ddp_loss_matches_single_process, tiny_clip

SCALE = torch.tensor(10.0)


def _normal(*shape, seed=0):
    return F.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed)), dim=-1)


def _hand_built(best, n_txt=1, dim=16):
    """Captions e_s (for every caption index); branch b of image s is e_s weighted 2 for b = best[s], 0.3 otherwise,
    plus a little seeded noise so that similarities to other samples' captions depend on the branch."""
    n, n_img = len(best), 1 + max(best)
    text = torch.eye(dim)[:n].unsqueeze(1).expand(n, n_txt, dim).clone()
    weight = torch.full((n, n_img, 1), 0.3)
    weight[torch.arange(n), best] = 2.0
    noise = 0.3 * torch.randn(n, n_img, dim, generator=torch.Generator().manual_seed(0))
    return F.normalize(weight * text[:, :1] + noise, dim=-1), text


def _explicit_caption_loss(image, caption, branch, scale, smoothing=0.0):
    """Loop form of the assigned InfoNCE: image row r through branch[r], caption row c through branch[c]."""
    n = image.shape[0]
    per_image = torch.stack([scale * caption @ image[r, branch[r]] for r in range(n)])
    per_text = torch.stack([scale * image[:, branch[c]] @ caption[c] for c in range(n)])
    labels = torch.arange(n)
    return (F.cross_entropy(per_image, labels, label_smoothing=smoothing)
            + F.cross_entropy(per_text, labels, label_smoothing=smoothing)) / 2


def _loss(image, text, smoothing=0.0, margin=None):
    return HolisticLoss(smoothing, margin)({"image_features": image, "text_features": text, "logit_scale": SCALE})


# ---- loss ---------------------------------------------------------------------------------------------------------

def test_one_branch_one_caption_equals_plain_clip_loss():
    image, text = _normal(8, 1, 16, seed=0), _normal(8, 1, 16, seed=1)
    parts = HolisticLoss(0.1)({"image_features": image, "text_features": text, "logit_scale": SCALE})
    assert set(parts) == {"loss", "contrastive"}  # no branch hinge with a single branch
    torch.testing.assert_close(parts["loss"], info_nce(image[:, 0], text[:, 0], SCALE, 0.1))


def test_equal_counts_match_branch_i_with_caption_i():
    image, text = _normal(8, 2, 16, seed=0), _normal(8, 2, 16, seed=1)
    assert torch.equal(assign_branches(image, text), torch.tensor([[0, 1]]).expand(8, 2))
    expected = (info_nce(image[:, 0], text[:, 0], SCALE, 0.1) + info_nce(image[:, 1], text[:, 1], SCALE, 0.1)) / 2
    torch.testing.assert_close(_loss(image, text, 0.1)["loss"], expected)
    swapped = _loss(image.flip(1), text, 0.1)["loss"]
    assert not torch.allclose(swapped, expected)  # best-branch matching would not see the swap


def test_more_branches_than_captions_take_the_most_similar_branch():
    best = [2, 0, 1, 2, 1]
    image, text = _hand_built(best)
    branch = assign_branches(image, text)
    assert branch.tolist() == [[b] for b in best]
    expected = _explicit_caption_loss(image, text[:, 0], torch.tensor(best), SCALE)
    torch.testing.assert_close(_loss(image, text)["loss"], expected)
    permuted = image[:, [1, 2, 0]]  # free matching follows the branches wherever they are
    torch.testing.assert_close(_loss(permuted, text)["loss"], expected)


def test_fewer_branches_than_captions_pair_the_first_ones_and_free_match_the_rest():
    best = [1, 0, 1, 1]
    image, text = _hand_built(best, n_txt=3)
    branch = assign_branches(image, text)
    assert branch[:, :2].tolist() == [[0, 1]] * 4
    assert branch[:, 2].tolist() == best
    expected = torch.stack([_explicit_caption_loss(image, text[:, i], branch[:, i], SCALE) for i in range(3)]).mean()
    torch.testing.assert_close(_loss(image, text)["loss"], expected)


def test_caption_nce_with_a_fixed_branch_is_info_nce_of_that_branch():
    image, caption = _normal(6, 3, 16, seed=0), _normal(6, 16, seed=1)
    branch = torch.full((6,), 2)
    torch.testing.assert_close(caption_nce(image, caption, branch, SCALE, 0.1),
                               info_nce(image[:, 2], caption, SCALE, 0.1))


def test_branch_hinge_is_added_when_branches_are_alike():
    image = _normal(4, 1, 16).expand(4, 3, 16)  # three identical branches: mean cosine 1
    text = _normal(4, 3, 16, seed=1)
    parts = _loss(image, text, margin=0.7)
    torch.testing.assert_close(parts["diversity"], torch.tensor(0.3))
    torch.testing.assert_close(parts["loss"], parts["contrastive"] + 0.3)
    assert _loss(_normal(4, 3, 16, seed=2), text, margin=0.7)["diversity"] == 0  # random branches: cosine ~ 0


# ---- model --------------------------------------------------------------------------------------------------------

def _caption_tokens(n, k):
    return open_clip.tokenize(captions(n * k, long=False)).unflatten(0, (n, k))


def test_one_class_token_reproduces_the_plain_image_tower():
    clip = tiny_clip().eval()
    plain = FixClip(copy.deepcopy(clip), FixClipConfig.plain()).eval()
    model = HolisticClip(copy.deepcopy(clip), HolisticConfig(num_branches=1, captions_per_image=1)).eval()
    images = batch(4)[0]
    with torch.no_grad():
        torch.testing.assert_close(model.encode_image_branches(images)[:, 0], plain.encode_image(images))
        torch.testing.assert_close(model.encode_image(images, normalize=True),
                                   plain.encode_image(images, normalize=True))


def test_text_tower_is_the_stretched_single_caption_tower():
    clip = tiny_clip().eval()
    model = HolisticClip(copy.deepcopy(clip)).eval()
    reference = FixClip(copy.deepcopy(clip), FixClipConfig.plain().with_(stretch=True)).eval()
    tokens = batch(4)[1]
    assert model.context_length == 248
    with torch.no_grad():
        assert torch.equal(model.encode_text(tokens), reference.encode_text(tokens))


def test_class_tokens_do_not_see_each_other():
    mask = branch_attention_mask(3, 4)
    assert mask.shape == (7, 7)
    blocked = torch.isinf(mask)
    assert blocked[:3, :3].tolist() == [[False, True, True], [True, False, True], [True, True, False]]
    assert not blocked[:, 3:].any() and not blocked[3:].any()


def test_extra_class_tokens_start_as_copies_of_cls():
    clip = tiny_clip()
    model = HolisticClip(copy.deepcopy(clip), HolisticConfig(num_branches=3))
    assert model.extra_class_embedding.shape == (2, 64)
    assert torch.equal(model.extra_class_embedding, clip.visual.class_embedding.expand(2, -1))
    assert torch.equal(model.extra_class_positions, clip.visual.positional_embedding[:1].expand(2, -1))
    assert torch.equal(model.branch_attn_mask, branch_attention_mask(3, 64))
    with torch.no_grad():
        branches = model.encode_image_branches(batch(2)[0])
    torch.testing.assert_close(branches[:, 1:], branches[:, :1].expand(-1, 2, -1))


def test_encode_image_is_the_mean_of_the_normalised_branches():
    torch.manual_seed(0)
    model = HolisticClip(tiny_clip(), HolisticConfig(num_branches=3)).eval()
    with torch.no_grad():
        model.extra_class_embedding.add_(torch.randn_like(model.extra_class_embedding))
        images = batch(4)[0]
        branches = F.normalize(model.encode_image_branches(images), dim=-1)
        assert not torch.allclose(branches[:, 0], branches[:, 1])
        mean = model.encode_image(images)
        torch.testing.assert_close(mean, branches.mean(dim=1))
        assert (mean.norm(dim=-1) < 1 - 1e-4).all()
        torch.testing.assert_close(model.encode_image(images, normalize=True), F.normalize(mean, dim=-1))


def test_forward_shapes_and_gradients_reach_the_new_tokens():
    model = HolisticClip(tiny_clip(), HolisticConfig(num_branches=3, captions_per_image=2))
    images = batch(4)[0]
    out = model(images, _caption_tokens(4, 2))
    assert out["image_features"].shape == (4, 3, 64) and out["text_features"].shape == (4, 2, 64)
    torch.testing.assert_close(out["text_features"].norm(dim=-1), torch.ones(4, 2))
    parts = HolisticLoss.from_config(model.method_cfg)(out)
    assert set(parts) == {"loss", "contrastive", "diversity"} and torch.isfinite(parts["loss"])
    parts["loss"].backward()
    for name in ("extra_class_embedding", "extra_class_positions"):
        grad = getattr(model, name).grad
        assert torch.isfinite(grad).all() and grad.abs().sum() > 0, name
    assert model.text_positions.kept.grad is None
    with pytest.raises(ValueError, match="captions_per_image"):
        model(images, _caption_tokens(4, 3))


# ---- torch.distributed --------------------------------------------------------------------------------------------

def _loss_and_grad(model, inputs, loss_fn):
    image, text = model(inputs).unflatten(-1, (5, 16)).split([3, 2], dim=1)
    loss = loss_fn({"image_features": F.normalize(image, dim=-1), "text_features": F.normalize(text, dim=-1),
                    "logit_scale": SCALE})["loss"]
    model.zero_grad()
    loss.backward()
    return loss.detach(), model.weight.grad.clone()


@pytest.mark.expensive
@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed not built")
def test_gathered_loss_and_gradients_equal_single_process_on_concatenated_batch():
    make_loss = functools.partial(HolisticLoss, 0.1, -0.5)
    mp.spawn(ddp_loss_matches_single_process, args=(2, free_port(), 5 * 16, _loss_and_grad, make_loss), nprocs=2,
             join=True)
