"""Shared helpers for the fixclip tests (imported explicitly; not a pytest conftest)."""
import copy

import open_clip
import torch

from fixclip.base_model import TINY_CLIP_CONFIG, build_clip
from fixclip.text_stretch import long_tokenizer

COLOURS = ["red", "green", "blue", "yellow", "purple", "orange", "black", "white"]
SHAPES = ["circle", "square", "triangle", "star", "cross", "heart", "ring", "diamond"]


def tiny_clip(seed: int = 0, **vision_overrides):
    """A fresh seeded open_clip CLIP of the embedded default's shape (64 px, 64 patches, 4 + 4 layers)."""
    cfg = copy.deepcopy(TINY_CLIP_CONFIG)
    cfg["vision_cfg"].update(vision_overrides)
    return build_clip(cfg, seed=seed)


def captions(n: int, long: bool):
    """n distinct captions; long ones exceed 77 CLIP tokens."""
    out = []
    for i in range(n):
        head = f"a {COLOURS[i % 8]} {SHAPES[(3 * i + 1) % 8]}"
        if long:
            extra = " ".join(f"and a {COLOURS[(i + j) % 8]} {SHAPES[(i * j + 2) % 8]} in cell {j}" for j in range(14))
            head = f"{head} {extra} , finally a {COLOURS[i % 8]} {SHAPES[i % 8]} number {i}"
        out.append(head)
    return out


def batch(n: int = 8, seed: int = 0, image_size: int = 64):
    """(images, long tokens at 248, short tokens at 77)."""
    gen = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 3, image_size, image_size, generator=gen)
    return images, long_tokenizer(248)(captions(n, long=True)), open_clip.tokenize(captions(n, long=False))
