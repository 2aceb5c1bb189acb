"""The model folder: what the train stage writes and evaluation reads back, as the method's model (a plain CLIP is
wrapped as ``FixClip`` with every module off).

A model folder is either
- a trained model: ``model.json`` (the base open_clip config; optional: the fallback base config rebuilds the
  architecture without it), ``fixclip.json`` (FixClipConfig fields) for a model built on ``FixClip``, for a method
  other than FIX-CLIP ``method.json`` (its name and its params section, see ``fixclip.methods``) and
  ``weights.pt``, the model's state_dict
  (bare, or under "state_dict" / "model"; DDP's "module." prefix is dropped), loaded strictly with
  ``weights_only=True``; or
- a base CLIP as in ``assets/base_clip``: ``model.json`` and ``weights.pt`` (an open_clip state_dict), no
  ``fixclip.json``.
Any other path is read by ``fixclip.checkpoint_formats.load_checkpoint`` (OpenAI, open_clip hub, transformers,
Long-CLIP) and wrapped like a base CLIP.
"""
import json
from pathlib import Path

import torch
from pydantic import ValidationError

from core.outputs import atomic_path

from .base_model import ModelRef, build_clip, resolve_model_config
from .checkpoint_formats import CheckpointError, load_checkpoint, load_clip, read_state_dict
from .config import FixClipConfig
from .methods import METHODS, method_of
from .model import FixClip
from .trainable import Trainable

FIXCLIP_CONFIG, MODEL_CONFIG, METHOD, WEIGHTS = "fixclip.json", "model.json", "method.json", "weights.pt"
# The name evaluation gives a trained model with regional prompts read with prompts=False (its backbone alone, what the
# exports hold); the export stage reports its scores beside the model's own.
WITHOUT_PROMPTS = "trained_without_prompts"


def save_atomic(state: dict, path: Path) -> None:
    """torch.save ``state`` to ``path`` so that readers see either nothing or the whole file, synced."""
    with atomic_path(path) as tmp, open(tmp, "wb") as file:
        torch.save(state, file)


def save_model_folder(model: Trainable, base_model: ModelRef, out_dir: str | Path) -> None:
    """Write a trained model folder: its base open_clip config, its FixClipConfig (a ``FixClip``), its method and
    params section (other than FIX-CLIP) and its state_dict."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / MODEL_CONFIG).write_text(json.dumps(resolve_model_config(base_model), indent=2) + "\n")
    if isinstance(model, FixClip):
        (out / FIXCLIP_CONFIG).write_text(model.cfg.model_dump_json(indent=2) + "\n")
    if type(model) is not FixClip:
        method = method_of(model)
        if method is None:
            raise ValueError(f"{type(model).__name__}: the model of no method in fixclip.methods.METHODS")
        (out / METHOD).write_text(json.dumps(method, indent=2) + "\n")
    save_atomic({k: v.detach().cpu() for k, v in model.state_dict().items()}, out / WEIGHTS)


def _json_object(path: Path) -> dict:
    """The JSON object in ``path``; a CheckpointError (a user error naming the file) if it holds none."""
    try:
        saved = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(saved, dict):
        raise CheckpointError(f"{path}: not a JSON object")
    return saved


def _fixclip_config(path: Path) -> FixClipConfig:
    saved = _json_object(path)
    try:
        return FixClipConfig.model_validate(saved)
    except ValidationError as exc:  # the first error, on one line
        first = exc.errors()[0]
        raise CheckpointError(f"{path}: {'.'.join(map(str, first['loc'])) or 'top level'}: {first['msg']}") from None


def _build(folder: Path, clip) -> Trainable:
    """The model of the method that the folder's method.json names (FIX-CLIP without one) around ``clip``; a
    ``FixClip``'s text tower set-up is read from fixclip.json."""
    cfg = _fixclip_config(folder / FIXCLIP_CONFIG) if (folder / FIXCLIP_CONFIG).is_file() else FixClipConfig()
    if not (folder / METHOD).is_file():
        return FixClip(clip, cfg)
    saved = _json_object(folder / METHOD)
    if saved.get("method") not in METHODS:
        raise CheckpointError(f"{folder / METHOD}: unknown method {saved.get('method')!r} "
                              f"(known: {', '.join(METHODS)})")
    entry = METHODS[saved["method"]]
    return entry.load().build(clip, entry.section.model_validate(saved["params"]), cfg)


def load_base(config: ModelRef, weights: str | Path) -> FixClip:
    """A plain open_clip CLIP (config + local weights) wrapped with all FIX-CLIP modules off."""
    return FixClip(load_clip(config, weights), FixClipConfig.plain()).eval()


def load_model_folder(folder: str | Path, base_config: ModelRef | None = None, prompts: bool = True) -> Trainable:
    """The model in ``folder`` (layouts in the module docstring; or any checkpoint path); ``base_config`` rebuilds
    the architecture when a trained folder has no ``model.json``; ``prompts=False`` encodes images without the
    regional prompts of a model that has them (``FixClip.prompts_at_inference``)."""
    folder = Path(folder)
    model_config = folder / MODEL_CONFIG
    if model_config.is_file():
        _json_object(model_config)
    if (folder / FIXCLIP_CONFIG).is_file() or (folder / METHOD).is_file():
        model = _build(folder, build_clip(model_config if model_config.is_file() else base_config))
        model.load_state_dict(read_state_dict(folder / WEIGHTS), strict=True)
        model.prompts_at_inference = prompts
        return model.eval()
    if model_config.is_file():
        return load_base(model_config, folder / WEIGHTS)
    return FixClip(load_checkpoint(folder).model, FixClipConfig.plain()).eval()
