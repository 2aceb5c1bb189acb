"""The trained model as the train stage hands it on: ``weights.pt`` (FixClip state_dict), ``model.json`` (the base
open_clip config) and ``fixclip.json`` (FixClipConfig) - everything needed to rebuild it without the base weights."""
import dataclasses
import json
from pathlib import Path

import torch

from .base_model import ModelRef, build_clip, resolve_model_config
from .config import FixClipConfig
from .model import FixClip
from .train_checkpoints import save_atomic

WEIGHTS, MODEL_CONFIG, FIXCLIP_CONFIG = "weights.pt", "model.json", "fixclip.json"


def save_trained(model: FixClip, base_model: ModelRef, out_dir: str | Path) -> None:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / MODEL_CONFIG).write_text(json.dumps(resolve_model_config(base_model), indent=2) + "\n")
    (out / FIXCLIP_CONFIG).write_text(json.dumps(dataclasses.asdict(model.cfg), indent=2) + "\n")
    save_atomic({k: v.detach().cpu() for k, v in model.state_dict().items()}, out / WEIGHTS)


def load_trained(out_dir: str | Path) -> FixClip:
    """Rebuild the model ``save_trained`` wrote (weights loaded with ``weights_only=True``)."""
    out = Path(out_dir)
    raw = json.loads((out / FIXCLIP_CONFIG).read_text())
    cfg = FixClipConfig(**{**raw, "hfa_weights": tuple(raw["hfa_weights"])})
    model = FixClip(build_clip(out / MODEL_CONFIG), cfg)
    model.load_state_dict(torch.load(out / WEIGHTS, map_location="cpu", weights_only=True))
    return model
