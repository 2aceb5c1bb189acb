"""FIX-CLIP's transformers export as the text encoder of a diffusers Stable Diffusion pipeline (the paper's third
claim, at the interface; docs/export.md, "As the text encoder of a diffusion pipeline"): a prompt is read to 248
tokens, not cut at 77; at SD 1.5's width the shapes fit; SDXL's 77-token second encoder is what docs say it is.

The pipelines are built from configs with random weights (no hub): shapes and what reaches the UNet are under test.
"""
import copy
import logging

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from diffusers.utils import logging as diffusers_logging
from transformers import CLIPTextModel, CLIPTokenizer

from fixclip.base_model import build_clip
from fixclip.config import FixClipConfig
from fixclip.export.hf_folder import export_transformers
from fixclip.model import FixClip
from tests.fixclip.helpers import with_2_layers

pytestmark = pytest.mark.expensive  # Stable Diffusion pipelines at real widths

SENTENCE = "in the top left cell there is a small red circle with a solid fill ."
PROMPT = " ".join([SENTENCE] * 12)  # ~200 tokens
LATE_WORD = "red circle with a solid fill . in the top left cell there is a small red circle with a solid fill ."


def _late_change(prompt: str) -> str:
    """The prompt with one word changed past token 180, far beyond 77."""
    head, tail = prompt[:-len(LATE_WORD)], prompt[-len(LATE_WORD):]
    return head + tail.replace("red", "blue", 1)


def pipeline(text_encoder: CLIPTextModel, tokenizer: CLIPTokenizer) -> StableDiffusionPipeline:
    """A small Stable Diffusion pipeline: random UNet cross-attending at the text width, a small VAE, DDIM."""
    unet = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
                                block_out_channels=(32, 64), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), attention_head_dim=8,
                                cross_attention_dim=text_encoder.config.hidden_size, norm_num_groups=8)
    vae = AutoencoderKL(block_out_channels=(32, 64), in_channels=3, out_channels=3, latent_channels=4,
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                        norm_num_groups=8)
    return StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=DDIMScheduler(clip_sample=False), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)


def _image(pipe: StableDiffusionPipeline, prompt: str) -> np.ndarray:
    return pipe(prompt, num_inference_steps=2, height=64, width=64, output_type="np", guidance_scale=1.0,
                generator=torch.Generator().manual_seed(0)).images[0]


def _embeddings(pipe: StableDiffusionPipeline, prompt: str) -> torch.Tensor:
    return pipe.encode_prompt(prompt, "cpu", 1, do_classifier_free_guidance=False)[0]


@pytest.fixture(scope="module")
def truncation_log():
    """diffusers' warnings, captured (its logger does not propagate by default)."""
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = diffusers_logging.get_logger("diffusers")
    logger.addHandler(handler)
    yield records
    logger.removeHandler(handler)


def test_the_export_reads_a_long_prompt_to_248_tokens_in_a_stable_diffusion_pipeline(exported, truncation_log):
    folder = exported[2]
    text_encoder, tokenizer = CLIPTextModel.from_pretrained(folder), CLIPTokenizer.from_pretrained(folder)
    assert tokenizer.model_max_length == 248 and 150 < len(tokenizer(PROMPT).input_ids) <= 248
    pipe = pipeline(text_encoder, tokenizer)
    truncation_log.clear()
    long, changed = _embeddings(pipe, PROMPT), _embeddings(pipe, _late_change(PROMPT))
    assert long.shape == (1, 248, text_encoder.config.hidden_size)
    assert not torch.equal(long, changed)  # a word past token 77 reaches the UNet's cross-attention
    assert not np.array_equal(_image(pipe, PROMPT), _image(pipe, _late_change(PROMPT)))
    assert not [r for r in truncation_log if "truncated" in r.getMessage()]

    # Control: the same pipeline with a 77-token tokenizer (the base CLIP's) cuts the prompt, and says so.
    tokenizer_77 = CLIPTokenizer.from_pretrained(folder, model_max_length=77)
    pipe_77 = pipeline(text_encoder, tokenizer_77)
    truncation_log.clear()
    assert torch.equal(_embeddings(pipe_77, PROMPT), _embeddings(pipe_77, _late_change(PROMPT)))
    assert [r for r in truncation_log if "truncated" in r.getMessage()]


def test_the_export_s_token_states_are_our_text_tower_s(exported):
    """What the pipeline's cross-attention reads (last_hidden_state) is FixClip's text tower after ln_final."""
    model, folder = exported[0], exported[2]
    tokens = model.tokenizer()([PROMPT, "a photo"])
    with torch.inference_mode():
        theirs = CLIPTextModel.from_pretrained(folder)(tokens, attention_mask=(tokens != 0).long()).last_hidden_state
        ours = model.token_states(tokens)
    valid = tokens != 0
    torch.testing.assert_close(theirs[valid], ours[valid], atol=1e-5, rtol=1e-4)


def test_a_vit_l14_width_export_fits_stable_diffusion_1_5_s_cross_attention(tmp_path):
    """SD 1.x cross-attends at 768, ViT-L/14's text width: a FIX-CLIP export of that width plugs in, 248 tokens."""
    config = with_2_layers("ViT-L-14")
    model = FixClip(build_clip(config, seed=0), FixClipConfig.plain().with_(stretch=True)).eval()
    assert export_transformers(model, config, tmp_path / "export") <= 1e-5
    text_encoder = CLIPTextModel.from_pretrained(tmp_path / "export")
    pipe = pipeline(text_encoder, CLIPTokenizer.from_pretrained(tmp_path / "export"))
    assert pipe.unet.config.cross_attention_dim == 768 == text_encoder.config.hidden_size
    assert _embeddings(pipe, PROMPT).shape == (1, 248, 768)
    assert _image(pipe, PROMPT).shape == (64, 64, 3)


def test_sdxl_s_second_77_token_encoder_needs_the_first_at_77_as_docs_say(exported):
    """SDXL concatenates both encoders' token states per token: a 248-token first encoder beside a 77-token second
    one cannot be concatenated; with the first tokenizer set back to 77 it runs (and gives up the long context)."""
    folder = exported[2]
    first = CLIPTextModel.from_pretrained(folder)
    second_config = copy.deepcopy(first.config)
    second_config.max_position_embeddings = 77
    second = CLIPTextModel(second_config).eval()
    tokens_248 = CLIPTokenizer.from_pretrained(folder)(PROMPT, padding="max_length", truncation=True,
                                                       return_tensors="pt").input_ids
    tokens_77 = CLIPTokenizer.from_pretrained(folder, model_max_length=77)(
        PROMPT, padding="max_length", truncation=True, return_tensors="pt").input_ids
    with torch.inference_mode():
        states_248 = first(tokens_248, output_hidden_states=True).hidden_states[-2]  # SDXL reads the penultimate layer
        states_second = second(tokens_77, output_hidden_states=True).hidden_states[-2]
        with pytest.raises(RuntimeError, match="Sizes of tensors must match"):
            torch.concat([states_248, states_second], dim=-1)
        states_77 = first(tokens_77, output_hidden_states=True).hidden_states[-2]
    assert torch.concat([states_77, states_second], dim=-1).shape == (1, 77, 2 * first.config.hidden_size)
