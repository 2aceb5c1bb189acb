"""Build open_clip CLIP models from a config (built-in name, JSON file or dict); no hub. Weights are read by
``checkpoint_formats.load_clip``."""
import copy
import json
from pathlib import Path
from typing import Optional, Union

import open_clip
import torch
from open_clip.model import CLIP, CustomTextCLIP
from torch import nn

ModelRef = Union[str, Path, dict]

# The tiny base CLIP of the embedded default: 64 px images in 8 px patches (64 patches), 4 + 4 layers. The text tower
# is narrow because open_clip's 49408-token vocabulary dominates the file size.
TINY_CLIP_CONFIG = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 64, "patch_size": 8, "width": 64, "layers": 4, "head_width": 32, "mlp_ratio": 4.0},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 4, "mlp_ratio": 4.0},
}


def resolve_model_config(model: ModelRef) -> dict:
    """A config dict from a dict, a path to an open_clip-style JSON file (flat, or a hub folder's
    ``open_clip_config.json`` with ``model_cfg`` + ``preprocess_cfg``), or a built-in open_clip model name."""
    if isinstance(model, dict):
        return copy.deepcopy(model)
    if str(model).endswith(".json"):
        saved = json.loads(Path(model).read_text())
        return saved.get("model_cfg", saved)
    cfg = open_clip.get_model_config(str(model))
    if cfg is None:
        raise ValueError(f"unknown open_clip model {model!r} (not a built-in name nor a .json config)")
    return cfg


def build_clip(model: ModelRef, seed: Optional[int] = None) -> nn.Module:
    """Instantiate the open_clip model class the config asks for (CLIP, or CustomTextCLIP with custom_text)."""
    cfg = resolve_model_config(model)
    model_class = CustomTextCLIP if cfg.pop("custom_text", False) else CLIP
    with torch.random.fork_rng():
        if seed is not None:
            torch.manual_seed(seed)
        return model_class(**cfg)


def save_weights(model: nn.Module, path: Union[str, Path], dtype: torch.dtype = torch.float32) -> None:
    """Save the state_dict as plain tensors (loadable with ``weights_only=True``), floats cast to ``dtype``."""
    state = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in model.state_dict().items()}
    torch.save(state, path)
