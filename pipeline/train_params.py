"""The `train:` params section: method, base model, FIX-CLIP module switches, optimisation and run-time knobs.

Defaults follow Long-CLIP where FIX-CLIP is silent (AdamW, weight decay 1e-2, cosine schedule with warm-up, label
smoothing 0.1, logit scale reset to ln 100) and are sized for the embedded default's tiny base CLIP.
"""
from typing import Literal

from pydantic import Field, model_validator

from pipeline.schema import Section

IMPLEMENTED_METHODS = ("fixclip",)


class BaseModelParams(Section):
    """The pretrained CLIP fine-tuned: an open_clip model name or JSON config, and a local weights file (no hub)."""

    config: str = "assets/base_clip/model.json"
    weights: str = "assets/base_clip/weights.pt"


class FixClipParams(Section):
    """FIX-CLIP module switches and their hyper-parameters (mirror of fixclip.config.FixClipConfig)."""

    stretch: bool = True
    stretch_keep: int = Field(20, ge=1)
    stretch_ratio: int = Field(4, ge=1)
    trim_text_padding: bool = True
    dual_branch: bool = True
    mask_ratio: float = Field(0.75, ge=0.0, lt=1.0)
    mask_seed: int = 0
    regional_prompts: bool = True
    num_prompts: int = Field(8, ge=1)
    prompt_start_layer: int = Field(3, ge=1)
    hfa: bool = True
    hfa_groups: int = Field(2, ge=1)
    hfa_first_group: int = Field(1, ge=1)
    hfa_weights: list[float] = [0.5, 0.5]
    hfa_sigma: float = Field(1.0, gt=0.0)
    hfa_branch: Literal["long", "short"] = "long"
    label_smoothing: float = Field(0.1, ge=0.0, lt=1.0)

    @model_validator(mode="after")
    def _hfa_weights_per_group(self):
        if self.hfa and len(self.hfa_weights) != self.hfa_groups - self.hfa_first_group + 1:
            raise ValueError(f"hfa_weights: needs one weight per group {self.hfa_first_group}..{self.hfa_groups}, "
                             f"got {len(self.hfa_weights)}")
        return self


class DistributedParams(Section):
    """Processes per node and nodes. One node: the stage starts torchrun itself when nproc_per_node > 1. Several
    nodes: start `torchrun --nnodes N ... -m stages.train` on every node (the stage then uses torchrun's values)."""

    nproc_per_node: int = Field(1, ge=1)
    nnodes: int = Field(1, ge=1)


class TrainParams(Section):
    method: Literal["fixclip", "longclip", "holistic"] = "fixclip"
    shards: str = "data/shards/train"
    base_model: BaseModelParams = BaseModelParams()
    fixclip: FixClipParams = FixClipParams()
    batch_size: int = Field(32, ge=1)
    grad_accum: int = Field(1, ge=1)
    epochs: float | None = Field(3.0, gt=0)
    samples: int | None = Field(None, ge=1)
    lr: float = Field(5e-4, gt=0)
    weight_decay: float = Field(1e-2, ge=0)
    betas: list[float] = [0.9, 0.999]
    eps: float = Field(1e-8, gt=0)
    warmup_steps: int = Field(20, ge=0)
    logit_scale_init: float | None = Field(100.0, gt=1.0)
    logit_scale_max: float = Field(100.0, gt=1.0)
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    seed: int = 0
    threads: int | None = Field(None, ge=1)
    checkpoint_every: int = Field(50, ge=1)
    keep_checkpoints: int = Field(2, ge=1)
    nan_policy: Literal["error", "skip"] = "error"
    num_workers: int = Field(2, ge=0)
    shuffle_buffer: int = Field(1000, ge=0)
    log_every: int = Field(1, ge=1)
    distributed: DistributedParams = DistributedParams()

    @model_validator(mode="after")
    def _consistent(self):
        if self.method not in IMPLEMENTED_METHODS:
            raise ValueError(f"method: {self.method!r} is not implemented yet (implemented: {IMPLEMENTED_METHODS})")
        if (self.epochs is None) == (self.samples is None):
            raise ValueError("epochs: set exactly one of epochs and samples (the other null)")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError("betas: needs two values in [0, 1)")
        if self.batch_size % max(1, self.num_workers):
            raise ValueError(f"batch_size: must be a multiple of num_workers ({self.num_workers})")
        if self.logit_scale_init is not None and self.logit_scale_init > self.logit_scale_max:
            raise ValueError("logit_scale_init: exceeds logit_scale_max")
        return self
