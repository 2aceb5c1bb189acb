"""The training methods, one param apart (``train.method``): a table from each method's name to its model class,
its loss, its params section (``train.<name>``) and the shard members it reads as long captions. Adding a method is
one entry here plus its module (and its name in ``TrainConfig.method``).

method     model (fixclip/)            loss                  what a training sample needs
fixclip    model.FixClip               loss.FixClipLoss      image, long caption, short caption
longclip   longclip.LongClip           longclip.LongClipLoss image, long caption, short caption
holistic   holistic.HolisticClip       holistic.HolisticLoss image, K captions from K prompts
"""
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from .config import FixClipConfig, HolisticConfig, LongClipConfig, StrictConfig
from .holistic import HolisticClip, HolisticLoss
from .longclip import LongClip, LongClipLoss
from .loss import FixClipLoss
from .model import FixClip


def one_long_caption(section: StrictConfig) -> tuple[str, ...]:
    return ("long.txt",)


def holistic_long_captions(section: HolisticConfig) -> tuple[str, ...]:
    return tuple(f"long_{i}.txt" for i in range(section.captions_per_image))


@dataclass(frozen=True)
class Method:
    """One method. Its model is built as ``model(clip, section, fixclip)`` (the peers read FIX-CLIP's stretch keys
    from ``fixclip``), except FIX-CLIP's own, whose section is ``fixclip``; its loss as
    ``loss.from_config(section, rank, world_size)``."""

    model: type[FixClip]
    loss: type[nn.Module]
    section: type[StrictConfig]
    long_caption_keys: Callable[[StrictConfig], tuple[str, ...]] = one_long_caption

    def build(self, clip: nn.Module, section: StrictConfig, fixclip: FixClipConfig) -> FixClip:
        if self.model is FixClip:
            return FixClip(clip, fixclip)
        return self.model(clip, section, fixclip)


METHODS: dict[str, Method] = {
    "fixclip": Method(FixClip, FixClipLoss, FixClipConfig),
    "longclip": Method(LongClip, LongClipLoss, LongClipConfig),
    "holistic": Method(HolisticClip, HolisticLoss, HolisticConfig, holistic_long_captions),
}


def method_of(model: FixClip) -> dict | None:
    """{"method": name, "params": its section} of a peer method's model (what a model folder records in
    ``method.json`` to rebuild it); None for FIX-CLIP, whose section is the model's own ``fixclip.json``."""
    for name, method in METHODS.items():
        if type(model) is method.model and method.model is not FixClip:
            return {"method": name, "params": model.method_cfg.model_dump()}
    return None
