"""Use a model folder without DVC: ``model, preprocess, tokenizer = fixclip.load("models/fixclip")``.

``preprocess`` maps a PIL image to the model's input tensor (open_clip's eval transform, as our evaluation runs it);
``tokenizer`` maps a list of strings to token ids at the model's context (248 after the stretch).
"""
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image

from .eval.encode import eval_transform
from .model import FixClip
from .model_folder import load_model_folder


def load(path: str | Path, device: str | torch.device = "cpu") -> tuple[FixClip, Callable, Callable]:
    """(model in eval mode on ``device``, preprocess, tokenizer) of a trained model folder or a base CLIP folder."""
    model = load_model_folder(path).to(device)
    return model, eval_transform(model), model.tokenizer()


def embed_images(model: FixClip, preprocess: Callable, paths: Sequence[str | Path],
                 batch_size: int = 64) -> torch.Tensor:
    """[N, D] L2-normalised embeddings of image files."""
    device = next(model.parameters()).device
    rows = []
    with torch.inference_mode():
        for start in range(0, len(paths), batch_size):
            images = []
            for path in paths[start:start + batch_size]:
                with Image.open(path) as image:
                    images.append(preprocess(image.convert("RGB")))
            rows.append(F.normalize(model.encode_image(torch.stack(images).to(device)).float(), dim=-1))
    return torch.cat(rows).cpu() if rows else torch.empty(0, model.clip.visual.output_dim)


def embed_texts(model: FixClip, tokenizer: Callable, texts: Sequence[str], batch_size: int = 64) -> torch.Tensor:
    """[N, D] L2-normalised embeddings of texts (read up to the model's context)."""
    device = next(model.parameters()).device
    rows = []
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            tokens = tokenizer(list(texts[start:start + batch_size])).to(device)
            rows.append(F.normalize(model.encode_text(tokens).float(), dim=-1))
    return torch.cat(rows).cpu() if rows else torch.empty(0, model.clip.visual.output_dim)
