import pytest
import torch
import torch.nn.functional as F

from fixclip.config import FixClipConfig
from fixclip.model import FixClip
from fixclip.regional_prompts import regional_attention_mask
from tests.fixclip.helpers import batch, tiny_clip


def _allowed_by_rule(query: int, key: int, n: int, m: int) -> bool:
    """DESIGN.md, enumerated token by token: index 0 CLS, 1..n patches, n+1..n+m prompts."""
    def kind(i):
        return "cls" if i == 0 else ("patch" if i <= n else "prompt")
    if kind(query) == "cls":
        return True
    if kind(query) == "patch":
        return kind(key) in ("cls", "patch")
    j = query - n - 1  # prompt index
    if kind(key) == "prompt":
        return key == query
    if kind(key) == "patch":
        patch = key - 1
        return j * (n // m) <= patch < (j + 1) * (n // m)
    return False


@pytest.mark.parametrize("n,m", [(4, 1), (4, 2), (4, 4), (6, 3), (8, 2), (12, 4), (16, 8)])
def test_attention_mask_matches_rule_by_enumeration(n, m):
    mask = regional_attention_mask(n, m)
    assert mask.shape == (1 + n + m, 1 + n + m)
    for q in range(1 + n + m):
        for k in range(1 + n + m):
            expected = 0.0 if _allowed_by_rule(q, k, n, m) else float("-inf")
            assert mask[q, k].item() == expected, (q, k)


def _train_image_features(model: FixClip, images: torch.Tensor) -> torch.Tensor:
    """The raw-branch image features of the training forward, where regional prompts act."""
    tokens = batch(images.shape[0])[2]  # 77-token captions: these models have no stretch
    return model(images, tokens, tokens)["image_features"]


def _prompt_model(start_layer=3, seed=0):
    cfg = FixClipConfig.plain().with_(regional_prompts=True, num_prompts=8, prompt_start_layer=start_layer)
    torch.manual_seed(seed)
    return FixClip(tiny_clip(), cfg).eval()


def test_prompts_enter_from_layer_l_and_leave_output_shape():
    model = _prompt_model(start_layer=3)
    assert model.prompts.tokens.shape == (2, 8, 64)
    assert torch.count_nonzero(model.prompts.tokens) == 0  # zero-initialised
    lengths = []
    hooks = [b.register_forward_pre_hook(lambda mod, args: lengths.append(args[0].shape[1]))
             for b in model.clip.visual.transformer.resblocks]
    images = batch(2)[0]
    with torch.no_grad():
        features = _train_image_features(model, images)
    for h in hooks:
        h.remove()
    assert lengths == [65, 65, 73, 73]
    assert features.shape == model.clip.encode_image(images).shape
    assert torch.isfinite(features).all()


def test_patches_do_not_see_prompts_but_cls_does():
    model = _prompt_model(start_layer=4)  # prompts only in the last layer
    final_tokens = []
    model.clip.visual.ln_post.register_forward_hook(lambda mod, args, out: final_tokens.append(out))
    images = batch(2)[0]
    with torch.no_grad():
        _train_image_features(model, images)
        model.prompts.tokens.normal_()
        _train_image_features(model, images)
    before, after = final_tokens
    assert before.shape[1] == 65  # prompts dropped before the output head
    assert torch.equal(before[:, 1:], after[:, 1:])
    assert not torch.allclose(before[:, 0], after[:, 0])


def test_zero_prompts_receive_gradient():
    model = _prompt_model(start_layer=2).train()
    images = batch(2)[0]
    _train_image_features(model, images).pow(2).sum().backward()
    grad = model.prompts.tokens.grad
    assert torch.isfinite(grad).all() and grad.abs().sum(dim=(1, 2)).min() > 0  # every layer's prompts


def test_prompt_count_must_divide_patches():
    with pytest.raises(ValueError, match="fixclip.num_prompts"):
        FixClip(tiny_clip(), FixClipConfig.plain().with_(regional_prompts=True, num_prompts=5))


def test_prompt_region_rows_reach_the_output():
    """Prompt outputs carry over layers, so what each prompt may see (its region) changes the image feature."""
    model = _prompt_model(start_layer=2)
    images = batch(2)[0]
    with torch.no_grad():
        model.prompts.tokens.normal_()
        regional = _train_image_features(model, images)
        n = model.num_patches
        model.prompt_attn_mask[1 + n:, :] = 0.0  # prompts may now see everything
        open_rows = _train_image_features(model, images)
    assert not torch.allclose(regional, open_rows)


def test_inference_image_features_are_the_backbone_alone():
    """encode_image (evaluation, export) runs the open_clip image tower without the prompts: trained prompt values
    change the training features but not the inference ones, which equal the wrapped CLIP's."""
    model = _prompt_model(start_layer=2)
    images = batch(2)[0]
    with torch.no_grad():
        model.prompts.tokens.normal_()
        backbone = model.clip.encode_image(images)
        assert not torch.allclose(_train_image_features(model, images), F.normalize(backbone, dim=-1))
        torch.testing.assert_close(model.encode_image(images), backbone)
