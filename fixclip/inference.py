"""Use a model without DVC: ``model, preprocess, tokenizer = fixclip.load("models/fixclip")``.

The path is one of our model folders or exports, or a downloaded CLIP checkpoint (OpenAI ``ViT-B-16.pt``, an
open_clip hub folder, a transformers ``CLIPModel`` folder, Long-CLIP's ``longclip-B.pt``; see
``fixclip.checkpoint_formats``).

``preprocess`` maps a PIL image to the model's input tensor (open_clip's eval transform, as our evaluation runs it);
``tokenizer`` maps a list of strings to token ids at the model's context (248 after the stretch; a longer text is
cut there, and ``cut_texts`` says which were). Batched encoding of files and texts is
``fixclip.eval.encode.CachedEncoder``, which the CLI (``python -m fixclip``) uses.
"""
from collections.abc import Callable
from pathlib import Path

import torch

from core.cli import UserError
from .eval.encode import eval_transform
from .model import FixClip
from .model_folder import load_model_folder
from .text_stretch import long_tokenizer


def load(path: str | Path, device: str | torch.device = "cpu",
         prompts: bool = True) -> tuple[FixClip, Callable, Callable]:
    """(model in eval mode on ``device``, preprocess, tokenizer) of a model folder or checkpoint; preprocess is the
    checkpoint's own (mean/std, size, interpolation) where it names one. A FIX-CLIP model encodes images with its
    regional prompts, as it was trained; ``prompts=False`` leaves them out (the backbone alone, as the exports)."""
    model = load_model_folder(path, prompts=prompts).to(device)
    return model, eval_transform(model), model.tokenizer()


def device(name: str) -> torch.device:
    """The torch device ``name`` names, if this machine has it; a UserError (naming ``--device``) otherwise."""
    try:
        chosen = torch.device(name)
    except RuntimeError:
        raise UserError(f"--device {name}: not a device torch knows (cpu, cuda, cuda:1, mps, ...)") from None
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name}: no CUDA device here (torch {torch.__version__} sees none)")
    if chosen.type == "cuda" and (chosen.index or 0) >= torch.cuda.device_count():
        raise UserError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if chosen.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"--device {name}: no MPS device here")
    return chosen


def cut_texts(texts: list[str], context_length: int) -> list[tuple[int, int, str]]:
    """(index, tokens, the last words kept) of each text longer than ``context_length`` tokens (start and end
    tokens included), which the tokenizer cuts there, as open_clip's does."""
    tokenizer = long_tokenizer(context_length)
    cut = []
    for index, text in enumerate(texts):
        tokens = tokenizer.encode(text)
        if len(tokens) + 2 > context_length:
            kept = tokenizer.decode(tokens[:context_length - 2]).split()
            cut.append((index, len(tokens) + 2, " ".join(kept[-6:])))
    return cut


def cut_notice(texts: list[str], context_length: int, what: str = "text") -> str | None:
    """One line naming the texts the model reads only in part (at most three named), or None."""
    cut = cut_texts(texts, context_length)
    if not cut:
        return None
    named = "; ".join(f"{what} {index + 1} has {tokens} tokens, read up to '... {last}'"
                      for index, tokens, last in cut[:3])
    more = f"; and {len(cut) - 3} more" if len(cut) > 3 else ""
    return (f"warning: the model reads {context_length} tokens and drops the rest: {named}{more}")
