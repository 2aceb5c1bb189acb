"""Probe inputs and the embedding comparison every export passes before it is written."""
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from ..model import FixClip
from .folded import ExportError

# Probe texts from a few tokens to past the 248-token context (truncated there), so the stretched rows, the
# extrapolated tail and truncation are all compared.
_PHRASE = "a small red circle in the upper left cell next to a large blue square"
PROBE_TEXTS = ["a photo", _PHRASE, " and ".join([_PHRASE] * 6), " and ".join([_PHRASE] * 15), " and ".join([_PHRASE] * 30)]


def probe_images(model: FixClip, count: int = 4, seed: int = 0) -> torch.Tensor:
    """Normalised-range random images [count, 3, H, W] at the model's input size (what a preprocess hands it)."""
    height, width = model.clip.visual.image_size
    return torch.randn(count, 3, height, width, generator=torch.Generator().manual_seed(seed))


def our_embeddings(model: FixClip, images: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """What an export must reproduce: the text tower, and the image tower without regional prompts (fixclip.export)."""
    with torch.inference_mode():
        return (F.normalize(model.encode_image(images, prompts=False).float(), dim=-1),
                F.normalize(model.encode_text(tokens).float(), dim=-1))


def max_difference(ours: tuple[torch.Tensor, torch.Tensor], theirs: tuple[torch.Tensor, torch.Tensor]) -> float:
    """Largest absolute difference between two (image, text) pairs of L2-normalised embeddings."""
    return max(float((a - F.normalize(b.float(), dim=-1)).abs().max()) for a, b in zip(ours, theirs))


def _usual_permissions(folder: Path) -> None:
    """Give every file in ``folder`` the mode the umask gives a new file (safetensors writes its files 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    for path in folder.rglob("*"):
        if path.is_file():
            path.chmod(0o666 & ~umask)


def write_verified(out_dir: str | Path, write: Callable[[Path], None], measure: Callable[[Path], float],
                   atol: float, what: str) -> float:
    """``write`` into a temporary sibling folder, ``measure`` the largest embedding difference of what loads from
    it, and move it to ``out_dir`` only if that is within ``atol``: a folder that loads but embeds differently is
    never left behind. Returns the difference."""
    out = Path(out_dir)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        write(tmp)
        _usual_permissions(tmp)
        difference = measure(tmp)
        if not difference <= atol:
            raise ExportError(f"{what}: the exported model embeds differently from ours (max |difference| "
                              f"{difference:.2e} > atol {atol:.0e}); nothing written to {out}")
        shutil.rmtree(out, ignore_errors=True)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return difference
