"""The training methods, one param apart (``train.method``): a table from each method's name to its model class,
its loss, its params section (``train.<name>``) and how many long captions per image it reads. Adding a method is
one entry here plus its module (and its name in ``TrainConfig.method``).

method     model (fixclip/)            loss                  what a training sample needs
fixclip    model.FixClip               loss.FixClipLoss      image, a long caption, short caption
longclip   longclip.LongClip           longclip.LongClipLoss image, a long caption, short caption
holistic   holistic.HolisticClip       holistic.HolisticLoss image, K captions from K prompts

FIX-CLIP and Long-CLIP read one long caption per sample: ``long.txt``, or with ``train.caption_pool`` K > 1 one of
``long_0.txt .. long_{K-1}.txt`` drawn per sample and step (the control that gives them Holistic CLIP's captions).
"""
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from .config import FixClipConfig, HolisticConfig, LongClipConfig, StrictConfig
from .holistic import HolisticClip, HolisticLoss
from .longclip import LongClip, LongClipLoss
from .loss import FixClipLoss
from .model import FixClip


def caption_keys(count: int) -> tuple[str, ...]:
    """The shard members of ``count`` long captions per sample (the shard stage writes long_i.txt only for K > 1)."""
    return ("long.txt",) if count == 1 else tuple(f"long_{i}.txt" for i in range(count))


def caption_pool(section: StrictConfig, pool: int) -> int:
    return pool


def holistic_captions(section: HolisticConfig, pool: int) -> int:
    return section.captions_per_image


@dataclass(frozen=True)
class Method:
    """One method. Its model is built as ``model(clip, section, fixclip)`` (the peers read FIX-CLIP's stretch keys
    from ``fixclip``), except FIX-CLIP's own, whose section is ``fixclip``; its loss as
    ``loss.from_config(section, rank, world_size)``. ``captions(section, caption_pool)`` is how many long captions
    per sample it reads; ``draws_one`` whether it draws one of them per sample (else it reads them all)."""

    model: type[FixClip]
    loss: type[nn.Module]
    section: type[StrictConfig]
    captions: Callable[[StrictConfig, int], int] = caption_pool
    draws_one: bool = True
    captions_key: str = "caption_pool"

    def build(self, clip: nn.Module, section: StrictConfig, fixclip: FixClipConfig) -> FixClip:
        if self.model is FixClip:
            return FixClip(clip, fixclip)
        return self.model(clip, section, fixclip)


METHODS: dict[str, Method] = {
    "fixclip": Method(FixClip, FixClipLoss, FixClipConfig),
    "longclip": Method(LongClip, LongClipLoss, LongClipConfig),
    "holistic": Method(HolisticClip, HolisticLoss, HolisticConfig, holistic_captions, draws_one=False,
                       captions_key="holistic.captions_per_image"),
}


def method_of(model: FixClip) -> dict | None:
    """{"method": name, "params": its section} of a peer method's model (what a model folder records in
    ``method.json`` to rebuild it); None for FIX-CLIP, whose section is the model's own ``fixclip.json``."""
    for name, method in METHODS.items():
        if type(model) is method.model and method.model is not FixClip:
            return {"method": name, "params": model.method_cfg.model_dump()}
    return None
