"""The `train:` section of params.yaml, defined once: the library runs on the validated section as it is.

Defaults follow Long-CLIP where FIX-CLIP is silent (AdamW, weight decay 1e-2, cosine schedule with warm-up, label
smoothing 0.1, logit scale reset to ln 100) and are sized for the embedded default's tiny base CLIP. Where the run
writes (model folder, checkpoints, curves) is not a param: the caller passes ``RunDirs``.
"""
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import ConfigDict, Field, ValidationError, field_validator, model_validator

from core.config import StrictConfig

from ..config import MethodSection
from ..methods import METHODS
# Fields that change how progress is shown or saved, never the trained weights (the world size is fingerprinted
# directly, so `distributed` is left out too).
_NOT_IN_FINGERPRINT = ("checkpoint_every", "keep_checkpoints", "log_every", "threads", "distributed", "distributor",
                       "ray")


class BaseModelConfig(StrictConfig):
    """The pretrained CLIP; also the "base" row of the evaluation: an open_clip model name or JSON config, and a local weights file (no hub)."""

    config: str = "assets/base_clip/model.json"
    """Open_clip model name or JSON config."""
    weights: str = "assets/base_clip/weights.pt"
    """Local state_dict (loaded weights_only), no hub."""


class DistributedConfig(StrictConfig):
    """Distributor local only: processes per node and nodes. One node: the stage starts torchrun itself when
    nproc_per_node > 1. Several nodes: start `torchrun --nnodes N ... -m stages.train <its paths>` on every node (the
    stage then uses torchrun's values)."""

    nproc_per_node: int = Field(1, ge=1)
    """> 1: the stage relaunches itself under torchrun --standalone"""
    nnodes: int = Field(1, ge=1)
    """> 1: start `torchrun --nnodes N ... -m stages.train` on every node yourself"""


class RayTrainConfig(StrictConfig):
    """Distributor ray only; every node sees the repo, data/ and checkpoints/ at this path. The loop runs under Ray
    Train's TorchTrainer on `workers` workers of a Ray cluster, each one rank (gloo on CPU, nccl on GPU); the path is
    the driver's (docs/scale.md, "Run it on a Ray cluster")."""

    address: str | None = None
    """Host:port | ray://host:port | auto; null: RAY_ADDRESS if set, else a new local instance."""
    workers: int = Field(2, ge=1)
    """Ray Train workers, one rank each (global batch = batch_size * grad_accum * workers)"""
    use_gpu: bool = False
    """one GPU per worker (nccl); false: gloo on CPU"""
    cpus_per_worker: float = Field(1.0, gt=0)
    """CPUs Ray reserves per worker."""
    resources_per_worker: dict[str, float] = {}
    """Custom Ray resources per worker, e.g. {trainer: 1} to keep workers on some nodes."""
    max_failures: int = Field(2, ge=0)
    """Worker-group restarts from the last checkpoint before the stage fails."""


class TrainConfig(StrictConfig):
    """A fine-tuning run. ``batch_size`` is per rank and micro-step (as open_clip_train's --batch-size): one optimizer
    step sees ``batch_size * grad_accum * world_size`` samples. With ``grad_accum > 1`` the contrastive negatives of
    a micro-step are its own ``batch_size * world_size`` samples (gradients are averaged; open_clip's feature cache
    for accumulation is not reproduced).

    Besides these fields, one section per method of ``fixclip.methods.METHODS``, ``train.<name>`` (e.g.
    ``cfg.fixclip``), validated by its own class, its defaults where absent."""

    model_config = ConfigDict(extra="allow")  # the method sections; any other unknown key is refused (_sections)

    method: str = "fixclip"
    """Fixclip | longclip | holistic (docs/methods.md): a name in fixclip.methods.METHODS; each reads its own section
    below (and fixclip's stretch keys); another method's key set off its default is an error."""
    shards: str = "data/shards/train"
    """Folder of *.tar, or a brace pattern."""
    base_model: BaseModelConfig = BaseModelConfig()
    caption_pool: int = Field(1, ge=1)
    """Fixclip/longclip: draw each step's long caption from a sample's first K (K <= caption.captions_per_image): the
    control for Holistic's K captions. 1: long.txt."""
    batch_size: int = Field(32, ge=1)
    """Per rank and micro-step; global = batch_size * grad_accum * ranks."""
    grad_accum: int = Field(1, ge=1)
    """Negatives stay within a micro-step: micro-steps per optimizer step, gradients averaged (open_clip's feature
    cache for accumulation is not reproduced)."""
    epochs: float | None = Field(3.0, gt=0)
    """Exactly one of epochs / samples (the other null): the run's length in passes over the shards."""
    samples: int | None = Field(None, ge=1)
    """The run's length in samples, when set (epochs must then be null)."""
    lr: float = Field(5e-4, gt=0)
    """Peak learning rate (AdamW)."""
    weight_decay: float = Field(1e-2, ge=0)
    """Long-CLIP; matrices only."""
    betas: list[float] = [0.9, 0.999]
    """AdamW's betas."""
    eps: float = Field(1e-8, gt=0)
    """AdamW's epsilon."""
    warmup_steps: int = Field(20, ge=0)
    """Linear warm-up, then cosine to 0."""
    new_params_lr_scale: float = Field(10.0, gt=0)
    """Lr multiplier for the mask token and HFA heads (prompts: 1x, unless fixclip.prompt_lr_scaled); nothing the
    method adds from scratch is weight-decayed (see optim.adamw)."""
    logit_scale_init: float | None = Field(100.0, gt=1.0)
    """Reset to ln(100) at start (Long-CLIP); null keeps the base model's."""
    logit_scale_max: float = Field(100.0, gt=1.0)
    """Clamp after every step (open_clip_train)."""
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    """Auto (fp32 on CPU, bf16 autocast on CUDA) | fp32 | bf16."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Auto | cpu | cuda: where training runs (auto: the GPU when there is one)."""
    seed: int = 0
    """New modules' initial weights, the data shuffle and caption draws (shard order: shard.seed)."""
    threads: int | None = Field(None, ge=1)
    """Torch threads; null = torch's default."""
    checkpoint_every: int = Field(50, ge=1)
    """Optimizer steps; resume is automatic from checkpoints/train/."""
    keep_checkpoints: int = Field(2, ge=1)
    """Checkpoints kept (the newest)."""
    nan_policy: Literal["error", "skip"] = "error"
    """Error: stop naming the step | skip: skip that optimizer step."""
    num_workers: int = Field(2, ge=0)
    """Data workers per rank; batch_size must be a multiple; needs ranks x workers shards."""
    shuffle_buffer: int = Field(1000, ge=0)
    """Samples in the shuffle buffer of each data worker."""
    log_every: int = Field(1, ge=1)
    """DVCLive row every N steps."""
    distributed: DistributedConfig = DistributedConfig()
    distributor: Literal["local", "ray"] = "local"
    """Local (this process, or torchrun as above) | ray (Ray Train workers; docs/scale.md)."""
    ray: RayTrainConfig = RayTrainConfig()

    @model_validator(mode="wrap")
    @classmethod
    def _sections(cls, data, handler):
        """Each registered method's section validated by its class (errors keep their key path); keys that are
        neither a field nor a method's section are unknown."""
        if not isinstance(data, dict):
            return handler(data)
        data, errors = dict(data), []
        for key in [k for k in data if k not in cls.model_fields and k not in METHODS]:
            errors.append({"type": "extra_forbidden", "loc": (key,), "input": data.pop(key)})
        for name, entry in METHODS.items():
            try:
                data[name] = entry.section.model_validate(data.get(name, {}))
            except ValidationError as exc:
                errors += [_line_error(e, (name, *e["loc"])) for e in exc.errors()]
                data[name] = entry.section()
        if not errors:
            return handler(data)
        try:
            handler(data)
        except ValidationError as exc:
            errors += [_line_error(e, e["loc"]) for e in exc.errors()]
        raise ValidationError.from_exception_data(cls.__name__, errors)

    @field_validator("method")
    @classmethod
    def _registered(cls, method: str) -> str:
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r} (known: {', '.join(METHODS)})")
        return method

    @model_validator(mode="after")
    def _consistent(self):
        for key in self.unused_method_keys():
            raise ValueError(f"{key}: set, but train.method is {self.method!r}, which does not read it "
                             "(leave it at its default)")
        if (self.epochs is None) == (self.samples is None):
            raise ValueError("epochs: set exactly one of epochs and samples (the other null)")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError("betas: needs two values in [0, 1)")
        if self.batch_size % max(1, self.num_workers):
            raise ValueError(f"batch_size: must be a multiple of num_workers ({self.num_workers}): each worker "
                             "delivers an equal chunk")
        if self.method_section.reads_all_captions and self.caption_pool != 1:
            raise ValueError(f"caption_pool: {self.method} reads all its captions "
                             f"({self.method_section.captions_key}); leave caption_pool at 1")
        if self.logit_scale_init is not None and self.logit_scale_init > self.logit_scale_max:
            raise ValueError("logit_scale_init: exceeds logit_scale_max")
        if self.distributor == "ray":
            self._fits_ray()
        return self

    def _fits_ray(self) -> None:
        if self.distributed != DistributedConfig():
            raise ValueError("distributed: with distributor ray, Ray Train places the ranks: set ray.workers and leave "
                             "distributed at 1 process on 1 node")
        if self.ray.use_gpu and self.device == "cpu":
            raise ValueError("ray.use_gpu: true, but device is cpu")
        if not self.ray.use_gpu and self.device == "cuda":
            raise ValueError("device: cuda needs ray.use_gpu: true (Ray gives a worker a GPU only when asked)")

    @property
    def method_section(self) -> MethodSection:
        """The chosen method's own params section, ``train.<method>``."""
        return getattr(self, self.method)

    def unused_method_keys(self) -> list[str]:
        """Keys of another method's section set to a non-default value that the chosen method does not read (so
        `-S train.method=...` alone works with every other section at its defaults; a changed key that would be
        ignored is an error)."""
        changed = []
        for name in METHODS:
            section = getattr(self, name, None)
            if name == self.method or section is None:
                continue
            read = self.method_section.reads.get(name, ())
            default = type(section)()
            changed += [f"{name}.{key}" for key in type(section).model_fields
                        if key not in read and getattr(section, key) != getattr(default, key)]
        return changed

    def fingerprint(self, world_size: int, shard_counts: dict) -> str:
        """Identifies the trajectory: a checkpoint is resumed only by a run with the same fingerprint."""
        values = self.model_dump(exclude=set(_NOT_IN_FINGERPRINT))
        values.update(world_size=world_size, shards=shard_counts,
                      base_weights_sha256=file_sha256(self.base_model.weights))
        return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()


def _line_error(error: dict, loc: tuple) -> dict:
    """A reported validation error as pydantic takes it to raise again, at ``loc``."""
    ctx = {"ctx": error["ctx"]} if "ctx" in error else {}
    return {"type": error["type"], "loc": loc, "input": error["input"], **ctx}


@dataclass(frozen=True)
class RunDirs:
    """Where a run writes: the trained model, its checkpoints, and its DVCLive curves (None: no curves)."""

    out_dir: str | Path
    checkpoint_dir: str | Path
    log_dir: str | Path | None = None
    progress: bool = True


def file_sha256(path: str | Path) -> str:
    """sha256 of a file's bytes (base weights, shards: what a resumed run must share with its checkpoints)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
