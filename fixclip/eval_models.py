"""Loading the models to evaluate, all as ``FixClip`` (a plain CLIP is wrapped with every module off).

A model folder is either
- a trained model: ``fixclip.json`` (FixClipConfig fields), ``model.json`` (the base open_clip config; optional:
  the fallback base config rebuilds the architecture without it) and ``weights.pt``, a ``FixClip`` state_dict
  (bare, or under "state_dict" / "model"; DDP's "module." prefix is dropped), loaded strictly with
  ``weights_only=True``; or
- a base CLIP as in ``assets/base_clip``: ``model.json`` and ``weights.pt`` (an open_clip state_dict), no
  ``fixclip.json``.
"""
import dataclasses
import json
from pathlib import Path

import torch

from .base_model import ModelRef, build_clip, load_clip
from .config import FixClipConfig
from .model import FixClip

FIXCLIP_CONFIG, MODEL_CONFIG, WEIGHTS = "fixclip.json", "model.json", "weights.pt"


def load_base(config: ModelRef, weights: str | Path) -> FixClip:
    """A plain open_clip CLIP (config + local weights) wrapped with all FIX-CLIP modules off."""
    return FixClip(load_clip(config, weights), FixClipConfig.plain()).eval()


def fixclip_config(fields: dict) -> FixClipConfig:
    """``FixClipConfig`` from a JSON mapping; unknown keys are an error naming them."""
    known = {f.name for f in dataclasses.fields(FixClipConfig)}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise ValueError(f"unknown FixClipConfig keys: {unknown}")
    return FixClipConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()})


def _state_dict(path: Path) -> dict:
    state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):
        if isinstance(state.get(key), dict):
            state = state[key]
            break
    return {k.removeprefix("module."): v for k, v in state.items()}


def load_model_folder(folder: str | Path, base_config: ModelRef) -> FixClip:
    """The model in ``folder`` (layouts in the module docstring); ``base_config`` rebuilds the architecture when
    the folder's config does not name its base model."""
    folder = Path(folder)
    model_config = folder / MODEL_CONFIG
    if (folder / FIXCLIP_CONFIG).is_file():
        cfg = fixclip_config(json.loads((folder / FIXCLIP_CONFIG).read_text()))
        model = FixClip(build_clip(model_config if model_config.is_file() else base_config), cfg)
        model.load_state_dict(_state_dict(folder / WEIGHTS), strict=True)
        return model.eval()
    if model_config.is_file():
        return load_base(model_config, folder / WEIGHTS)
    raise FileNotFoundError(f"{folder}: no {FIXCLIP_CONFIG} (trained model) nor {MODEL_CONFIG} (base CLIP)")
