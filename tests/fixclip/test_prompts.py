import pytest
import torch
import torch.nn.functional as F

from fixclip.config import FixClipConfig
from fixclip.model import FixClip
from fixclip.regional_prompts import patch_regions, regional_attention_mask
from tests.fixclip.helpers import batch, tiny_clip


def _allowed_by_rule(query: int, key: int, grid: tuple[int, int], regions: tuple[int, int]) -> bool:
    """The prompt mask of docs/methods.md, enumerated token by token: index 0 CLS, 1..n patches (raster order),
    n+1..n+m prompts; prompt j sees the patches whose centre lies in region j (raster order) of the image split into
    rows x cols."""
    (h, w), (rows, cols) = grid, regions
    n = h * w

    def kind(i):
        return "cls" if i == 0 else ("patch" if i <= n else "prompt")
    if kind(query) == "cls":
        return True
    if kind(query) == "patch":
        return kind(key) in ("cls", "patch")
    if kind(key) == "prompt":
        return key == query
    if kind(key) == "patch":
        y, x = divmod(key - 1, w)
        centre_y, centre_x = (y + 0.5) / h, (x + 0.5) / w  # as fractions of the image
        region_row, region_col = divmod(query - n - 1, cols)
        return (region_row / rows <= centre_y < (region_row + 1) / rows
                and region_col / cols <= centre_x < (region_col + 1) / cols)
    return False


@pytest.mark.parametrize("grid, regions", [((2, 2), (1, 1)), ((2, 2), (2, 2)), ((4, 4), (2, 2)), ((8, 8), (3, 3)),
                                           ((3, 6), (3, 2)), ((14, 14), (2, 2)), ((5, 7), (2, 3))])
def test_attention_mask_matches_rule_by_enumeration(grid, regions):
    n, m = grid[0] * grid[1], regions[0] * regions[1]
    mask = regional_attention_mask(grid, regions)
    assert mask.shape == (1 + n + m, 1 + n + m)
    for q in range(1 + n + m):
        for k in range(1 + n + m):
            expected = 0.0 if _allowed_by_rule(q, k, grid, regions) else float("-inf")
            assert mask[q, k].item() == expected, (q, k)


def test_toy_regions_are_the_scene_cells():
    """The toy world's 3 x 3 cells over its 8 x 8 patches of 8 px: every patch in exactly one region, regions of
    3, 2 and 3 patches per side, each patch's region the cell holding its centre pixel."""
    region = patch_regions((8, 8), (3, 3)).view(8, 8)
    cell = 64 / 3
    for y in range(8):
        for x in range(8):
            centre = (8 * y + 4, 8 * x + 4)
            assert region[y, x] == int(centre[0] // cell) * 3 + int(centre[1] // cell)
    assert torch.bincount(region.flatten()).tolist() == [9, 6, 9, 6, 4, 6, 9, 6, 9]


def _train_image_features(model: FixClip, images: torch.Tensor) -> torch.Tensor:
    """The raw-branch image features of the training forward, where regional prompts act."""
    tokens = batch(images.shape[0])[2]  # 77-token captions: these models have no stretch
    return model(images, tokens, tokens)["image_features"]


def _prompt_model(start_layer=3, seed=0):
    cfg = FixClipConfig.plain().with_(regional_prompts=True, prompt_grid=[2, 4], prompt_start_layer=start_layer)
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


def test_prompt_grid_must_fit_the_patch_grid():
    with pytest.raises(ValueError, match="fixclip.prompt_grid: more regions than the 8 x 8 patch grid"):
        FixClip(tiny_clip(), FixClipConfig.plain().with_(regional_prompts=True, prompt_grid=[3, 9]))


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


def test_inference_keeps_the_prompts_and_can_leave_them_out():
    """encode_image computes what training computes for the long branch (the class token reads the prompts), so a
    trained prompt changes it; prompts=False (or prompts_at_inference off) gives the wrapped CLIP's image tower."""
    model = _prompt_model(start_layer=2)
    images = batch(2)[0]
    with torch.no_grad():
        untrained = model.encode_image(images)
        model.prompts.tokens.normal_()
        backbone = model.clip.encode_image(images)
        prompted = model.encode_image(images)
        assert not torch.allclose(prompted, untrained)
        torch.testing.assert_close(F.normalize(prompted, dim=-1), _train_image_features(model, images))
        torch.testing.assert_close(model.encode_image(images, prompts=False), backbone)
        model.prompts_at_inference = False
        torch.testing.assert_close(model.encode_image(images), backbone)


def test_raster_regions_are_consecutive_blocks_of_n_over_m_patches():
    """The paper's variant: prompt j sees patches floor(j N / M) .. in raster order, every patch in one block."""
    mask = regional_attention_mask((8, 8), (3, 3), "raster")
    n, m = 64, 9
    seen = mask[1 + n:, 1:1 + n] == 0
    assert seen.sum(dim=0).tolist() == [1] * n
    for j in range(m):
        patches = seen[j].nonzero().flatten().tolist()
        assert patches == list(range(patches[0], patches[-1] + 1))  # consecutive
        assert len(patches) in (n // m, n // m + 1)


def test_fresh_prompts_replace_the_last_layers_prompt_outputs():
    """With fresh prompts (the paper's) a prompt's attention to its region never reaches the output: opening its
    rows changes nothing, where carried prompts (our default) change the feature (test above)."""
    cfg = FixClipConfig.plain().with_(regional_prompts=True, prompt_grid=[2, 4], prompt_start_layer=2,
                                      prompt_layers="fresh")
    model = FixClip(tiny_clip(), cfg).eval()
    images = batch(2)[0]
    with torch.no_grad():
        model.prompts.tokens.normal_()
        regional = model.encode_image(images)
        model.prompt_attn_mask[1 + model.num_patches:, :] = 0.0
        torch.testing.assert_close(model.encode_image(images), regional)
        assert not torch.allclose(regional, model.encode_image(images, prompts=False))
