"""The transformers export: a ``CLIPModel`` folder (config, safetensors weights, tokenizer, image processor) that
``CLIPModel.from_pretrained`` and ``CLIPProcessor.from_pretrained`` load offline, with no code of ours.

The config says ``max_position_embeddings: 248``; the tokenizer is open_clip's BPE (vocabulary and merges written
out) with ``model_max_length`` 248. It pads with ``<|endoftext|>`` where open_clip pads with id 0: under the causal
mask, with pooling at the first end-of-text token, padding never reaches an embedding.

Weight mapping (open_clip -> transformers): the fused attention input projection is split into q / k / v; ``proj``
matrices (used as ``x @ P``) become ``Linear`` weights ``P.T``; ln_pre / ln_post / ln_final become
pre_layrnorm / post_layernorm / final_layer_norm.
"""
from pathlib import Path

import torch
from open_clip.model import CLIP
from open_clip.tokenizer import SimpleTokenizer
from open_clip.transformer import QuickGELU, ResidualAttentionBlock
from torch import nn
from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

from ..model import FixClip
from .folded import NotExpressible, folded_clip
from .openclip_folder import preprocess_config
from .verify import PROBE_TEXTS, max_difference, our_embeddings, probe_images, write_verified

BOS, EOS = "<|startoftext|>", "<|endoftext|>"


def _activation(blocks) -> str:
    acts = {type(block.mlp.gelu) for block in blocks}
    if acts == {QuickGELU}:
        return "quick_gelu"
    if acts == {nn.GELU} and all(block.mlp.gelu.approximate == "none" for block in blocks):
        return "gelu"
    raise NotExpressible(f"transformers' CLIP has no activation matching {sorted(a.__name__ for a in acts)}")


def check_expressible(clip: nn.Module) -> None:
    """Raise NotExpressible naming what transformers' ``CLIPModel`` cannot express."""
    def require(ok: bool, why: str):
        if not ok:
            raise NotExpressible(f"transformers export: CLIPModel cannot express {why}")

    require(type(clip) is CLIP, f"an open_clip {type(clip).__name__} (custom or Hugging Face text tower)")
    visual = clip.visual
    require(visual.attn_pool is None and visual.pool_type == "tok" and not visual.final_ln_after_pool,
            "an image tower pooled other than by its CLS token after ln_post")
    require(isinstance(visual.ln_pre, nn.LayerNorm), "an image tower without ln_pre")
    require(visual.conv1.bias is None, "a patch embedding with a bias")
    require(visual.proj is not None and isinstance(clip.text_projection, nn.Parameter),
            "a projection with a bias or no projection")
    require(clip.text_pool_type == "argmax", f"text pooling {clip.text_pool_type!r} (only argmax / first EOT)")
    for blocks in (visual.transformer.resblocks, clip.transformer.resblocks):
        require(all(type(b) is ResidualAttentionBlock and isinstance(b.ls_1, nn.Identity)
                    and isinstance(b.attn, nn.MultiheadAttention) for b in blocks),
                "layer scale, custom attention or attention norms")
    norms = {m.eps for m in clip.modules() if isinstance(m, nn.LayerNorm)}
    require(len(norms) == 1, f"LayerNorms with different eps {sorted(norms)}")
    require(_activation(visual.transformer.resblocks) == _activation(clip.transformer.resblocks),
            "different activations in the two towers")


def hf_config(clip: CLIP, config: dict) -> CLIPConfig:
    vision, text = config["vision_cfg"], config["text_cfg"]
    eps = next(m.eps for m in clip.modules() if isinstance(m, nn.LayerNorm))
    act = _activation(clip.transformer.resblocks)
    visual = clip.visual
    vision_width = visual.transformer.width
    bpe = SimpleTokenizer()
    return CLIPConfig(
        projection_dim=config["embed_dim"],
        text_config=dict(
            vocab_size=clip.vocab_size, max_position_embeddings=clip.context_length,
            hidden_size=clip.transformer.width, num_hidden_layers=clip.transformer.layers,
            num_attention_heads=clip.transformer.resblocks[0].attn.num_heads,
            intermediate_size=clip.transformer.resblocks[0].mlp.c_fc.out_features,
            hidden_act=act, layer_norm_eps=eps, projection_dim=config["embed_dim"],
            bos_token_id=bpe.sot_token_id, eos_token_id=bpe.eot_token_id, pad_token_id=bpe.eot_token_id),
        vision_config=dict(
            image_size=visual.image_size[0], patch_size=visual.patch_size[0], hidden_size=vision_width,
            num_hidden_layers=visual.transformer.layers,
            num_attention_heads=visual.transformer.resblocks[0].attn.num_heads,
            intermediate_size=visual.transformer.resblocks[0].mlp.c_fc.out_features,
            hidden_act=act, layer_norm_eps=eps, projection_dim=config["embed_dim"]),
    )


def _encoder_layers(state: dict, src: str, dst: str, layers: int) -> dict:
    out = {}
    for i in range(layers):
        s, d = f"{src}.{i}", f"{dst}.{i}"
        for name, part in zip("qkv", state[f"{s}.attn.in_proj_weight"].chunk(3)):
            out[f"{d}.self_attn.{name}_proj.weight"] = part
        for name, part in zip("qkv", state[f"{s}.attn.in_proj_bias"].chunk(3)):
            out[f"{d}.self_attn.{name}_proj.bias"] = part
        for ours, theirs in (("attn.out_proj", "self_attn.out_proj"), ("ln_1", "layer_norm1"),
                             ("ln_2", "layer_norm2"), ("mlp.c_fc", "mlp.fc1"), ("mlp.c_proj", "mlp.fc2")):
            for p in ("weight", "bias"):
                out[f"{d}.{theirs}.{p}"] = state[f"{s}.{ours}.{p}"]
    return out


def hf_state_dict(clip: CLIP) -> dict:
    """open_clip CLIP state_dict -> transformers CLIPModel state_dict."""
    s = clip.state_dict()
    out = {
        "logit_scale": s["logit_scale"].reshape(()),
        "text_model.embeddings.token_embedding.weight": s["token_embedding.weight"],
        "text_model.embeddings.position_embedding.weight": s["positional_embedding"],
        "text_model.final_layer_norm.weight": s["ln_final.weight"],
        "text_model.final_layer_norm.bias": s["ln_final.bias"],
        "text_projection.weight": s["text_projection"].T,
        "vision_model.embeddings.class_embedding": s["visual.class_embedding"],
        "vision_model.embeddings.patch_embedding.weight": s["visual.conv1.weight"],
        "vision_model.embeddings.position_embedding.weight": s["visual.positional_embedding"],
        "vision_model.pre_layrnorm.weight": s["visual.ln_pre.weight"],
        "vision_model.pre_layrnorm.bias": s["visual.ln_pre.bias"],
        "vision_model.post_layernorm.weight": s["visual.ln_post.weight"],
        "vision_model.post_layernorm.bias": s["visual.ln_post.bias"],
        "visual_projection.weight": s["visual.proj"].T,
    }
    out |= _encoder_layers(s, "transformer.resblocks", "text_model.encoder.layers", clip.transformer.layers)
    out |= _encoder_layers(s, "visual.transformer.resblocks", "vision_model.encoder.layers",
                           clip.visual.transformer.layers)
    return {k: v.contiguous().clone() for k, v in out.items()}


def hf_tokenizer(context_length: int) -> CLIPTokenizer:
    """open_clip's BPE (the vocabulary it ships) as a transformers tokenizer, special tokens under CLIP's names."""
    bpe = SimpleTokenizer()
    vocab = dict(bpe.encoder)
    vocab[BOS] = vocab.pop("<start_of_text>")
    vocab[EOS] = vocab.pop("<end_of_text>")
    merges = [pair for pair, _ in sorted(bpe.bpe_ranks.items(), key=lambda item: item[1])]
    return CLIPTokenizer(vocab=vocab, merges=merges, bos_token=BOS, eos_token=EOS, unk_token=EOS, pad_token=EOS,
                         model_max_length=context_length)


def hf_image_processor(model: FixClip) -> CLIPImageProcessor:
    """The same resize (shorter side, bicubic), centre crop and normalisation as open_clip's eval transform."""
    pre = preprocess_config(model)
    height, width = model.clip.visual.image_size
    return CLIPImageProcessor(size={"shortest_edge": min(height, width)}, crop_size={"height": height, "width": width},
                              image_mean=pre["mean"], image_std=pre["std"], resample=3, do_convert_rgb=True)


def write_folder(model: FixClip, base_config, out: Path, contents: dict) -> None:
    clip, config = folded_clip(model, base_config)
    check_expressible(clip)
    hf_cfg = hf_config(clip, config)
    hf_cfg.fixclip_export = contents  # saved in config.json beside CLIPConfig's own keys
    hf_model = CLIPModel(hf_cfg).eval()
    hf_model.load_state_dict(hf_state_dict(clip), strict=True)
    hf_model.save_pretrained(out)
    CLIPProcessor(image_processor=hf_image_processor(model), tokenizer=hf_tokenizer(clip.context_length)
                  ).save_pretrained(out)


def _features(output) -> torch.Tensor:
    """transformers 5 returns an output object from get_*_features, 4.x a tensor."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


def compare(model: FixClip, folder: Path) -> float:
    """Largest embedding difference between ``model`` and what transformers loads from ``folder`` (its own
    tokenizer's ids for the probe texts)."""
    loaded = CLIPModel.from_pretrained(folder).eval()
    tokenizer = CLIPTokenizer.from_pretrained(folder)
    images = probe_images(model)
    batch = tokenizer(PROBE_TEXTS, padding="max_length", truncation=True, return_tensors="pt")
    ours = our_embeddings(model, images, model.tokenizer()(PROBE_TEXTS))
    with torch.inference_mode():
        theirs = (_features(loaded.get_image_features(pixel_values=images)),
                  _features(loaded.get_text_features(**batch)))
    return max_difference(ours, theirs)


def export_transformers(model: FixClip, base_config, out_dir: str | Path, atol: float = 1e-5,
                        contents: dict | None = None) -> float:
    """Write the transformers folder (verified; ``contents``, what it holds, goes into config.json under
    ``fixclip_export``); returns the measured max embedding difference."""
    return write_verified(out_dir, lambda out: write_folder(model, base_config, out, contents or {}),
                          lambda out: compare(model, out), atol, "transformers export")
