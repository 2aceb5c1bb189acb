"""Real model sizes on CPU (issue 26): ViT-B/16 and ViT-L/14 with every FIX-CLIP module on, as the paper profile
sets the modules.

Where depth is cut, and why that is safe: the paper profile's module settings are checked against the full-depth
towers (12 / 24 vision layers), built on the meta device, so no memory is spent. Training and export run on ViT-B/16
at its real widths (768 / 512), 224 px, 196 patches of 16 px and 248 text positions, with 2 layers per tower instead
of 12: no tensor's shape depends on depth, and HFA (2 groups of 1 layer) and the regional prompts (from layer 2) still
have layers to act on. Random weights: formats and shapes are under test, not what the weights know.
"""
import open_clip
import pytest
import torch
import yaml

from fixclip.base_model import build_clip
from fixclip.config import FixClipConfig
from fixclip.export.hf_folder import export_transformers
from fixclip.export.openclip_folder import export_open_clip
from fixclip.loss import FixClipLoss
from fixclip.model import FixClip
from fixclip.regional_prompts import regional_attention_mask
from fixclip.train.optim import adamw
from tests.conftest import REPO
from tests.fixclip.helpers import with_2_layers

PAPER_FIXCLIP = yaml.safe_load((REPO / "configs/paper-30m.yaml").read_text())["train"]["fixclip"]
LONG_TEXT = " ".join(["a large red circle in the top left cell beside a small striped blue square ,"] * 10)


@pytest.mark.parametrize("name, patches, vision_layers", [("ViT-B-16", 196, 12), ("ViT-L-14", 256, 24)])
def test_the_paper_profile_modules_fit_the_real_backbone(name, patches, vision_layers):
    cfg = FixClipConfig.model_validate(PAPER_FIXCLIP)
    assert cfg.regional_prompts and cfg.hfa and cfg.dual_branch and cfg.stretch
    with torch.device("meta"):
        model = FixClip(build_clip(name), cfg)
    assert model.num_patches == patches and model.context_length == 248
    assert len(model.clip.visual.transformer.resblocks) == vision_layers
    quadrants = regional_attention_mask(tuple(model.clip.visual.grid_size), tuple(cfg.prompt_grid))
    assert quadrants[1 + patches:, 1:1 + patches].isfinite().sum(dim=1).tolist() == [patches // 4] * 4
    with torch.device("meta"), pytest.raises(ValueError, match="prompt_grid"):
        FixClip(build_clip(name), cfg.model_copy(update={"prompt_grid": [17, 2]}))  # more rows than 14 or 16


@pytest.mark.expensive
def test_vit_b16_trains_with_every_module_and_exports_what_it_embeds(tmp_path):
    config = with_2_layers("ViT-B-16")
    cfg = FixClipConfig(prompt_grid=[2, 2], prompt_start_layer=2, hfa_groups=2, hfa_first_group=1,
                        hfa_weights=[0.5, 0.5])
    model = FixClip(build_clip(config, seed=0), cfg).train()
    loss_fn, optimizer = FixClipLoss.from_config(cfg), adamw(model, 1e-4, 0.1, (0.9, 0.98), 1e-6)
    images = torch.randn(4, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    long_tokens = model.tokenizer()([f"{LONG_TEXT} number {i}" for i in range(4)])
    short_tokens = open_clip.tokenize([f"a red circle number {i}" for i in range(4)])
    assert bool((long_tokens != 0).sum(dim=1).min() > 77)
    before = {name: p.detach().clone() for name, p in model.named_parameters() if not name.startswith("clip.")}
    for _ in range(2):
        parts = loss_fn(model(images, long_tokens, short_tokens))
        assert {"long", "short", "hfa_1", "hfa_2"} <= set(parts) and torch.isfinite(parts["loss"])
        optimizer.zero_grad(set_to_none=True)
        parts["loss"].backward()
        optimizer.step()
    moved = [name for name, p in model.named_parameters() if name in before and not torch.equal(p, before[name])]
    assert any("prompt" in n for n in moved) and any("mask" in n for n in moved) and any("hfa" in n for n in moved)

    model.eval()
    assert export_open_clip(model, config, tmp_path / "open_clip") <= 1e-5
    assert export_transformers(model, config, tmp_path / "transformers") <= 1e-5
