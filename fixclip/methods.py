"""The training methods, chosen by ``train.method``: the registry from each method's name to its params section
(``train.<name>``) and its loader. A section is torch-free (params are validated without torch); the loader imports
the method's module, its model, loss and training hooks (``fixclip.trainable.Method``), when a model is built.
Adding a method is its module plus one entry here (docs/methods.md, "Add a method").

method     section (config)   model (fixclip/)            loss                  what a training sample needs
fixclip    FixClipConfig      model.FixClip               loss.FixClipLoss      image, a long caption, short caption
longclip   LongClipConfig     longclip.LongClip           longclip.LongClipLoss image, a long caption, short caption
holistic   HolisticConfig     holistic.HolisticClip       holistic.HolisticLoss image, K captions from K prompts

FIX-CLIP and Long-CLIP read one long caption per sample: ``long.txt``, or with ``train.caption_pool`` K > 1 one of
``long_0.txt .. long_{K-1}.txt`` drawn per sample and step (the control that gives them Holistic CLIP's captions).
"""
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .config import FixClipConfig, HolisticConfig, LongClipConfig, MethodSection

if TYPE_CHECKING:
    from .trainable import Method


@dataclass(frozen=True)
class Registered:
    """A method's entry: its params section class and a function returning its ``Method`` (importing its module)."""

    section: type[MethodSection]
    load: Callable[[], "Method"]


def _fixclip() -> "Method":
    from .model import METHOD
    return METHOD


def _longclip() -> "Method":
    from .longclip import METHOD
    return METHOD


def _holistic() -> "Method":
    from .holistic import METHOD
    return METHOD


METHODS: dict[str, Registered] = {
    "fixclip": Registered(FixClipConfig, _fixclip),
    "longclip": Registered(LongClipConfig, _longclip),
    "holistic": Registered(HolisticConfig, _holistic),
}


def caption_keys(count: int) -> tuple[str, ...]:
    """The shard members of ``count`` long captions per sample (the shard stage writes long_i.txt only for K > 1)."""
    return ("long.txt",) if count == 1 else tuple(f"long_{i}.txt" for i in range(count))


def method_of(model) -> dict | None:
    """{"method": name, "params": its section} of a method's model (what a model folder records in ``method.json``
    to rebuild it); None for a model of no registered method."""
    for name, entry in METHODS.items():
        if type(model) is entry.load().model:
            return {"method": name, "params": model.method_cfg.model_dump()}
    return None
