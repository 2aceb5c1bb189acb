import pytest
import torch

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
        features = model.encode_image(images)
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
        model.encode_image(images)
        model.prompts.tokens.normal_()
        model.encode_image(images)
    before, after = final_tokens
    assert before.shape[1] == 65  # prompts dropped before the output head
    assert torch.equal(before[:, 1:], after[:, 1:])
    assert not torch.allclose(before[:, 0], after[:, 0])


def test_zero_prompts_receive_gradient():
    model = _prompt_model(start_layer=2).train()
    images = batch(2)[0]
    model.encode_image(images).pow(2).sum().backward()
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
        regional = model.encode_image(images)
        n = model.num_patches
        model.prompt_attn_mask[1 + n:, :] = 0.0  # prompts may now see everything
        open_rows = model.encode_image(images)
    assert not torch.allclose(regional, open_rows)
