"""What the training loop and the model folder ask of a method's model (``Trainable``), and a method's torch side
(``Method``): fixclip.methods registers it by name next to its params section (docs/methods.md, "Add a method")."""
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from .config import FixClipConfig, MethodSection


class Trainable(nn.Module):
    """A method's model. It holds the open_clip model as ``clip``, the text context length it tokenizes for as
    ``context_length`` and its params section as ``method_cfg``; ``forward(images, long_tokens, short_tokens)``
    returns what its loss reads, ``encode_image`` / ``encode_text`` what evaluation reads. The hooks below are what
    the training loop asks of it; their defaults fit a model that adds no random draws, warm-up or logit scale."""

    @property
    def logit_scale(self) -> nn.Parameter:
        return self.clip.logit_scale

    def logit_scales(self) -> list[nn.Parameter]:
        """Every logit scale, clamped after each optimizer step to [0, ln train.logit_scale_max]."""
        return [self.logit_scale]

    def new_parameters(self) -> list[nn.Parameter]:
        """Parameters the method adds from scratch: not weight-decayed (``train.optim.adamw``)."""
        return []

    def lr_scaled_parameters(self) -> list[nn.Parameter]:
        """New parameters trained at ``train.new_params_lr_scale`` times the learning rate."""
        return []

    def seed_rank(self, rank: int) -> None:
        """Seed the model's own random draws (torch's global generator is the loop's) for this rank."""

    def rng_state(self) -> dict:
        """The state of those draws, saved with the torch RNG state in every checkpoint (its own keys)."""
        return {}

    def set_rng_state(self, state: dict) -> None:
        """Restore what ``rng_state`` returned (``state`` holds the loop's keys too)."""

    def start_step(self, step: int) -> None:
        """Called before optimizer step ``step`` (0-based): where a warm-up switches."""


@dataclass(frozen=True)
class Method:
    """A method's torch side. Its model is built as ``build(clip, section, fixclip)`` (default
    ``model(clip, section)``; ``fixclip`` is the FIX-CLIP section, whose text stretch keys the peers read), its loss
    as ``loss.from_config(section, rank, world_size)``, mapping the model's output to {"loss": .., parts ..}."""

    model: type[Trainable]
    loss: type[nn.Module]
    builder: Callable[[nn.Module, MethodSection, FixClipConfig], Trainable] | None = None

    def build(self, clip: nn.Module, section: MethodSection, fixclip: FixClipConfig) -> Trainable:
        if self.builder is not None:
            return self.builder(clip, section, fixclip)
        return self.model(clip, section)
