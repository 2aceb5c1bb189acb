"""Use a model without DVC: ``model, preprocess, tokenizer = fixclip.load("models/fixclip")``.

The path is one of our model folders or exports, or a downloaded CLIP checkpoint (OpenAI ``ViT-B-16.pt``, an
open_clip hub folder, a transformers ``CLIPModel`` folder, Long-CLIP's ``longclip-B.pt``; see
``fixclip.checkpoint_formats``).

``preprocess`` maps a PIL image to the model's input tensor (open_clip's eval transform, as our evaluation runs it);
``tokenizer`` maps a list of strings to token ids at the model's context (248 after the stretch). Batched encoding of
files and texts is ``fixclip.eval.encode.CachedEncoder``, which the CLI (``python -m fixclip``) uses.
"""
from collections.abc import Callable
from pathlib import Path

import torch

from .eval.encode import eval_transform
from .model import FixClip
from .model_folder import load_model_folder


def load(path: str | Path, device: str | torch.device = "cpu",
         prompts: bool = True) -> tuple[FixClip, Callable, Callable]:
    """(model in eval mode on ``device``, preprocess, tokenizer) of a model folder or checkpoint; preprocess is the
    checkpoint's own (mean/std, size, interpolation) where it names one. A FIX-CLIP model encodes images with its
    regional prompts, as it was trained; ``prompts=False`` leaves them out (the backbone alone, as the exports)."""
    model = load_model_folder(path, prompts=prompts).to(device)
    return model, eval_transform(model), model.tokenizer()
