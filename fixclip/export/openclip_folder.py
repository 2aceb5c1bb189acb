"""The open_clip export: a ``local-dir:`` folder that open_clip loads with no code of ours.

    model, _, preprocess = open_clip.create_model_and_transforms("local-dir:models/export/open_clip")
    tokenizer = open_clip.get_tokenizer("local-dir:models/export/open_clip")   # 248 tokens

``open_clip_config.json`` holds ``model_cfg`` (the base config, ``text_cfg.context_length`` 248) and
``preprocess_cfg`` (and ``fixclip_export``: what the folder holds of the model, which open_clip ignores);
``open_clip_model.safetensors`` the weights, the stretched positional table folded in.
"""
import json
from pathlib import Path

import open_clip
import torch
from safetensors.torch import save_file

from ..model import FixClip
from .folded import folded_clip
from .verify import PROBE_TEXTS, max_difference, our_embeddings, probe_images, write_verified

CONFIG, WEIGHTS = "open_clip_config.json", "open_clip_model.safetensors"


def preprocess_config(model: FixClip) -> dict:
    """open_clip's evaluation preprocess as our evaluation runs it (``fixclip.eval.encode.eval_transform``)."""
    height, width = model.clip.visual.image_size
    cfg = open_clip.transform.PreprocessCfg(size=height if height == width else [height, width])
    return {"size": cfg.size, "mode": cfg.mode, "mean": list(cfg.mean), "std": list(cfg.std),
            "interpolation": cfg.interpolation, "resize_mode": cfg.resize_mode}


def write_folder(model: FixClip, base_config, out: Path, contents: dict) -> None:
    clip, config = folded_clip(model, base_config)
    (out / CONFIG).write_text(json.dumps({"model_cfg": config, "preprocess_cfg": preprocess_config(model),
                                          "fixclip_export": contents}, indent=2) + "\n")
    save_file({k: v.contiguous() for k, v in clip.state_dict().items()}, str(out / WEIGHTS))


def compare(model: FixClip, folder: Path) -> float:
    """Largest embedding difference between ``model`` and the open_clip model loaded from ``folder``."""
    name = f"local-dir:{folder}"
    loaded, _, _ = open_clip.create_model_and_transforms(name)
    images = probe_images(model)
    tokens = open_clip.get_tokenizer(name)(PROBE_TEXTS)
    ours = our_embeddings(model, images, tokens)
    with torch.inference_mode():
        theirs = (loaded.eval().encode_image(images), loaded.encode_text(tokens))
    return max_difference(ours, theirs)


def export_open_clip(model: FixClip, base_config, out_dir: str | Path, atol: float = 1e-5,
                     contents: dict | None = None) -> float:
    """Write the open_clip folder (verified; ``contents``, what it holds, goes into its config under
    ``fixclip_export``); returns the measured max embedding difference."""
    return write_verified(out_dir, lambda out: write_folder(model, base_config, out, contents or {}),
                          lambda out: compare(model, out), atol, "open_clip export")
