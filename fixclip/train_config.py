"""Everything one training run needs, as plain values (the train stage maps params.yaml's `train:` onto it)."""
import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from .config import FixClipConfig

# Fields that change where things are written or how progress is shown, never the trained weights.
_NOT_IN_FINGERPRINT = ("out_dir", "checkpoint_dir", "log_dir", "checkpoint_every", "keep_checkpoints", "log_every",
                       "progress", "threads")


@dataclass(frozen=True)
class TrainConfig:
    """A FIX-CLIP fine-tuning run. ``batch_size`` is per rank and micro-step (as open_clip_train's --batch-size):
    one optimizer step sees ``batch_size * grad_accum * world_size`` samples. With ``grad_accum > 1`` the contrastive
    negatives of a micro-step are its own ``batch_size * world_size`` samples (gradients are averaged; open_clip's
    feature cache for accumulation is not reproduced)."""

    shards: str
    base_model: str | dict
    base_weights: str
    out_dir: str = "models/fixclip"
    checkpoint_dir: str = "checkpoints/train"
    log_dir: str | None = "dvclive/train"
    fixclip: FixClipConfig = field(default_factory=FixClipConfig)
    batch_size: int = 32
    grad_accum: int = 1
    epochs: float | None = 1.0
    samples: int | None = None  # when set, the run's length in samples (epochs is then ignored)
    lr: float = 5e-4
    weight_decay: float = 1e-2
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    warmup_steps: int = 10
    logit_scale_init: float | None = 100.0
    logit_scale_max: float = 100.0
    precision: str = "auto"  # auto (fp32 on CPU, bf16 autocast on CUDA) | fp32 | bf16
    device: str = "auto"  # auto | cpu | cuda
    seed: int = 0
    threads: int | None = None
    checkpoint_every: int = 100
    keep_checkpoints: int = 2
    nan_policy: str = "error"  # error | skip
    num_workers: int = 2
    shuffle_buffer: int = 1000
    log_every: int = 1
    progress: bool = True

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "TrainConfig":
        raw = json.loads(text)
        fix = raw.pop("fixclip")
        fix["hfa_weights"] = tuple(fix["hfa_weights"])
        raw["betas"] = tuple(raw["betas"])
        return cls(fixclip=FixClipConfig(**fix), **raw)

    def fingerprint(self, world_size: int, shard_counts: dict) -> str:
        """Identifies the trajectory: a checkpoint is resumed only by a run with the same fingerprint."""
        values = {k: v for k, v in json.loads(self.to_json()).items() if k not in _NOT_IN_FINGERPRINT}
        values.update(world_size=world_size, shards=shard_counts, base_weights_sha256=_sha256(self.base_weights))
        return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()


def _sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
