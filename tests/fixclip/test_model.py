import copy

import open_clip
import pytest
import torch

from fixclip.base_model import TINY_CLIP_CONFIG, build_clip
from fixclip.config import FixClipConfig
from fixclip.loss import FixClipLoss
from fixclip.model import FixClip
from tests.fixclip.helpers import batch, captions, tiny_clip


def _plain_pair(trim: bool):
    clip = tiny_clip().eval()
    return clip, FixClip(copy.deepcopy(clip), FixClipConfig.plain().with_(trim_text_padding=trim)).eval()


def _short_batch(n=8):
    """Images and 77-token captions, the last one filling all 77 positions."""
    return batch(n)[0], open_clip.tokenize(captions(n - 1, long=False) + ["x " * 100])


@pytest.mark.parametrize("trim", [False, True])
def test_all_modules_off_matches_wrapped_open_clip(trim):
    clip, model = _plain_pair(trim)
    images, tokens = _short_batch()
    with torch.no_grad():
        ours = model(images, tokens)
        image_ref, text_ref, scale_ref = clip(images, tokens)
        check = torch.testing.assert_close if trim else (lambda a, b: torch.equal(a, b) or pytest.fail("differ"))
        check(ours["image_features"], image_ref)
        check(ours["text_features"], text_ref)
        check(model.encode_text(tokens, normalize=True), clip.encode_text(tokens, normalize=True))
        assert torch.equal(model.encode_image(images), clip.encode_image(images))
        assert torch.equal(ours["logit_scale"], scale_ref)
        assert set(ours) == {"image_features", "text_features", "logit_scale"}
        loss = FixClipLoss.from_config(model.cfg)(ours)
        assert set(loss) == {"loss", "long"}
        torch.testing.assert_close(loss["loss"], open_clip.ClipLoss()(image_ref, text_ref, scale_ref))


def test_full_model_outputs():
    torch.manual_seed(0)
    model = FixClip(tiny_clip(), FixClipConfig())
    out = model(*batch(4))
    for key in ("image_features", "text_features", "short_image_features", "short_text_features"):
        assert out[key].shape == (4, 64) and torch.isfinite(out[key]).all()
    assert len(out["hfa_image"]) == len(out["hfa_text"]) == 1  # the deeper group only (hfa_first_group 2 of 2)
    torch.testing.assert_close(out["hfa_logit_scale"], torch.tensor([14.29]))  # its own scale, not the main one
    parts = FixClipLoss.from_config(model.cfg)(out)
    assert set(parts) == {"loss", "long", "short", "hfa_2"}


def _new_parameter_names(model: FixClip):
    base = {"clip." + name for name, _ in tiny_clip().named_parameters()}
    return [name for name, _ in model.named_parameters() if name not in base]


def test_gradients_reach_every_new_parameter_and_not_the_frozen_positions():
    torch.manual_seed(0)
    model = FixClip(tiny_clip(), FixClipConfig())
    new = _new_parameter_names(model)
    assert {"text_positions.stretched", "mask_embedding.embedding", "prompts.tokens"} <= set(new)
    assert any(n.startswith("hfa_image.") for n in new) and any(n.startswith("hfa_text.") for n in new)
    assert "clip.positional_embedding" not in dict(model.named_parameters())
    params = dict(model.named_parameters())
    assert {id(p) for p in model.new_parameters()} == {id(params[n]) for n in new if n != "text_positions.stretched"}
    assert not model.text_positions.kept.requires_grad
    before = model.text_positions(248).detach().clone()
    optim = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.2)
    loss_fn = FixClipLoss.from_config(model.cfg)
    for step in range(2):
        loss_fn(model(*batch(4, seed=step)))["loss"].backward()
        if step == 0:
            params = dict(model.named_parameters())
            for name in new:
                grad = params[name].grad
                assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0, name
            assert model.text_positions.kept.grad is None
        optim.step()
        optim.zero_grad()
    after = model.text_positions(248).detach()
    assert torch.equal(after[:20], before[:20])
    assert not torch.equal(after[20:], before[20:])


def test_hfa_heads_warm_up_alone():
    """While hfa_heads_only is set, the HFA loss trains its heads and logit scale but sends nothing to the backbone;
    afterwards it reaches the backbone too."""
    torch.manual_seed(0)
    model = FixClip(tiny_clip(), FixClipConfig().with_(dual_branch=False, regional_prompts=False))
    grads = {}
    for heads_only in (True, False):
        model.hfa_heads_only = heads_only
        model.zero_grad()
        FixClipLoss.from_config(model.cfg)(model(*batch(4)))["hfa_2"].backward()
        grads[heads_only] = {n: p.grad for n, p in model.named_parameters()}
    backbone = [n for n in grads[True] if n.startswith("clip.") and "resblocks" in n]
    assert backbone and all(grads[True][n] is None for n in backbone)
    assert all(grads[False][n] is not None for n in backbone if "resblocks.3." in n)
    for n in ("hfa_image.projections.0.0.weight", "hfa_text.projections.0.0.weight", "hfa_logit_scale"):
        assert grads[True][n].abs().sum() > 0, n


def test_hfa_branch_short_uses_masked_image_and_short_text():
    torch.manual_seed(0)
    model = FixClip(tiny_clip(), FixClipConfig().with_(hfa_branch="short"))
    images, long_tokens, short_tokens = batch(4)
    out = model(images, long_tokens, short_tokens)
    swapped = long_tokens.clone()
    swapped[0] = swapped[1]
    model.mask_generator.manual_seed(0)
    first = model(images, long_tokens, short_tokens)
    model.mask_generator.manual_seed(0)
    second = model(images, swapped, short_tokens)
    torch.testing.assert_close(first["hfa_text"][0], second["hfa_text"][0])  # long text does not feed HFA
    assert out["hfa_text"][0].shape == (4, 64)


def test_bad_config_names_the_key():
    with pytest.raises(ValueError, match="fixclip.hfa_groups"):
        FixClip(tiny_clip(), FixClipConfig().with_(hfa_groups=3, hfa_weights=[1.0, 1.0]))
    with pytest.raises(ValueError, match="hfa_weights: needs one weight per group 2..2"):
        FixClipConfig().with_(hfa_weights=[1.0, 1.0])
    with pytest.raises(ValueError, match="fixclip.prompt_start_layer"):
        FixClip(tiny_clip(), FixClipConfig().with_(prompt_start_layer=5))


def test_stretching_a_model_that_is_already_long_is_refused():
    """A Long-CLIP checkpoint (248 positions) stretched again would get 932 positions: refused, naming the key."""
    config = copy.deepcopy(TINY_CLIP_CONFIG)
    config["text_cfg"]["context_length"] = 248
    with pytest.raises(ValueError, match=r"fixclip.stretch: the base model already has 248 text positions"):
        FixClip(build_clip(config, seed=0), FixClipConfig())
    assert FixClip(build_clip(config, seed=0), FixClipConfig().with_(stretch=False)).context_length == 248


def test_from_pretrained_loads_the_committed_base(tmp_path):
    model = FixClip.from_pretrained("assets/base_clip/model.json", "assets/base_clip/weights.pt")
    state = torch.load("assets/base_clip/weights.pt", weights_only=True)
    torch.testing.assert_close(model.clip.visual.conv1.weight, state["visual.conv1.weight"].float())
    torch.testing.assert_close(model.text_positions(20), state["positional_embedding"][:20].float())


@pytest.mark.expensive
def test_tiny_model_overfits_eight_pairs_under_the_full_loss():
    torch.manual_seed(0)
    model = FixClip(tiny_clip(), FixClipConfig())
    loss_fn = FixClipLoss.from_config(model.cfg)
    data = batch(8)
    optim = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.0)
    losses = []
    for _ in range(60):
        loss = loss_fn(model(*data))["loss"]
        optim.zero_grad()
        loss.backward()
        optim.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses[::10]
