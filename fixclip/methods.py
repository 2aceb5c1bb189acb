"""The three training methods, one param apart (``train.method``): each is a model class plus its loss, built from
the same base CLIP and read back from the same model folder.

method     model (fixclip/)            loss                 what a training sample needs
fixclip    model.FixClip               loss.FixClipLoss     image, long caption, short caption
longclip   longclip.LongClip           longclip.LongClipLoss image, long caption, short caption
holistic   holistic.HolisticClip       holistic.HolisticLoss image, K captions from K prompts
"""
from torch import nn

from .config import FixClipConfig, HolisticConfig, LongClipConfig
from .holistic import HolisticClip, HolisticLoss
from .longclip import LongClip, LongClipLoss
from .loss import FixClipLoss
from .model import FixClip

METHODS = ("fixclip", "longclip", "holistic")


def build_model(method: str, clip: nn.Module, fixclip: FixClipConfig, longclip: LongClipConfig,
                holistic: HolisticConfig) -> FixClip:
    """The method's model around ``clip``; Long-CLIP and Holistic CLIP read the stretch keys of ``fixclip``."""
    if method == "longclip":
        return LongClip(clip, longclip, fixclip)
    if method == "holistic":
        return HolisticClip(clip, holistic, fixclip)
    return FixClip(clip, fixclip)


def method_of(model: FixClip) -> dict | None:
    """{"method": name, "params": its section} of a Long-CLIP or Holistic CLIP model (what a model folder records
    to rebuild it with ``build_model``); None for FIX-CLIP."""
    if isinstance(model, LongClip):
        return {"method": "longclip", "params": model.longclip_cfg.model_dump()}
    if isinstance(model, HolisticClip):
        return {"method": "holistic", "params": model.holistic_cfg.model_dump()}
    return None


def build_loss(method: str, fixclip: FixClipConfig, longclip: LongClipConfig, holistic: HolisticConfig,
               rank: int = 0, world_size: int = 1) -> nn.Module:
    if method == "longclip":
        return LongClipLoss.from_config(longclip, rank, world_size)
    if method == "holistic":
        return HolisticLoss.from_config(holistic, rank, world_size)
    return FixClipLoss.from_config(fixclip, rank, world_size)


def long_caption_keys(method: str, holistic: HolisticConfig) -> tuple[str, ...]:
    """The shard members a method reads as its long captions: long.txt, or long_0.txt .. long_{K-1}.txt."""
    if method == "holistic":
        return tuple(f"long_{i}.txt" for i in range(holistic.captions_per_image))
    return ("long.txt",)
