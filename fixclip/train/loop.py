"""The training loop of every method (``train.method``): one entry point, ``train(cfg, dirs)``, for a single process,
under torchrun and under Ray Train (DDP: gloo on CPU, nccl on CUDA; the rank comes from the launcher's environment),
resuming exactly. What a method adds (random draws, warm-up, logit scales) the loop asks of its model through the
hooks of ``fixclip.trainable.Trainable``.

Exact resume: a checkpoint holds the weights, the AdamW state, the step, and every rank's torch RNG state and the
model's own (``rng_state``, e.g. FIX-CLIP's mask generator); the data position follows from the step (see data), the
learning rate from the schedule.
"""
import contextlib
import sys
import time
from pathlib import Path

import open_clip
import torch
from torch.nn.parallel import DistributedDataParallel

from ..base_model import build_clip
from ..checkpoint_formats import load_clip
from ..methods import METHODS, caption_keys
from ..trainable import Trainable
from . import checkpoints as ckpt
from . import distributed
from .config import RunDirs, TrainConfig, file_sha256
from .data import StreamLayout, TrainStream, check_members, count_samples, micro_batches, shard_list
from ..model_folder import save_model_folder
from .log import StepTimer, TrainLog
from .optim import adamw, clamp_logit_scale, cosine_lr, reset_logit_scale, set_lr


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or inf (nan_policy: error)."""


def check_config(cfg: TrainConfig) -> None:
    """Raise ValueError naming the key when the config does not fit the base model (e.g. more prompt regions than
    its patch grid has rows) or the shards (e.g. fewer captions per sample than the method reads); builds the model
    on the meta device only."""
    with torch.device("meta"):
        try:
            clip = build_clip(cfg.base_model.config)
        except (ValueError, OSError) as exc:
            raise ValueError(f"base_model.config: {exc}") from None
        _method_model(cfg, clip)
    keys = _caption_keys(cfg)
    shards = shard_list(cfg.shards) if keys != caption_keys(1) else []
    if shards and Path(shards[0]).is_file():
        check_members(shards[0], keys, cfg.method_section.captions_key)


def _caption_keys(cfg: TrainConfig) -> tuple[str, ...]:
    return caption_keys(cfg.method_section.captions(cfg.caption_pool))


def _method_model(cfg: TrainConfig, clip: torch.nn.Module) -> Trainable:
    return METHODS[cfg.method].load().build(clip, cfg.method_section, cfg.fixclip)


def _autocast(precision: str, device: torch.device):
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _total_steps(cfg: TrainConfig, dataset_size: int, samples_per_step: int) -> int:
    samples = cfg.samples if cfg.samples is not None else round(cfg.epochs * dataset_size)
    return max(1, samples // samples_per_step)


def _rng_state(model: Trainable) -> dict:
    state = {**model.rng_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(model: Trainable, state: dict) -> None:
    model.set_rng_state(state)
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _all_finite(model: torch.nn.Module) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in model.parameters())


class _Run:
    """State of one training run on one rank."""

    def __init__(self, cfg: TrainConfig, dirs: RunDirs, ranks: distributed.Ranks):
        self.cfg, self.dirs, self.ranks = cfg, dirs, ranks
        torch.manual_seed(cfg.seed)  # identical on every rank: new modules start equal everywhere
        model = _method_model(cfg, load_clip(cfg.base_model.config, cfg.base_model.weights))
        if cfg.logit_scale_init is not None:
            reset_logit_scale(model.logit_scale, cfg.logit_scale_init)
        model.seed_rank(ranks.rank)
        self.model = model.to(ranks.device)
        self.optimizer = adamw(model, cfg.lr, cfg.weight_decay, cfg.betas, cfg.eps, cfg.new_params_lr_scale)
        self.loss = METHODS[cfg.method].load().loss.from_config(cfg.method_section, ranks.rank, ranks.world_size)

        shards = shard_list(cfg.shards)
        counts = [count_samples(s) for s in shards]
        self.layout = StreamLayout(tuple(shards), tuple(counts), ranks.world_size, cfg.num_workers)
        self.layout.check()
        self.samples_per_step = cfg.batch_size * cfg.grad_accum * ranks.world_size
        self.total_steps = _total_steps(cfg, sum(counts), self.samples_per_step)
        # Content, not only names and counts: the same params on other data (a ground-truth control, recaptioned
        # shards) must not resume this run's checkpoints.
        shard_ids = {shard: [count, file_sha256(shard)] for shard, count in zip(shards, counts)}
        self.fingerprint = cfg.fingerprint(ranks.world_size, shard_ids)
        self.step, self.skipped_steps = 0, 0

    # ---- checkpoints ------------------------------------------------------------------------------------------

    def resume(self) -> None:
        """Load the latest checkpoint of this very run; checkpoints of another run (other params) are deleted."""
        folder = Path(self.dirs.checkpoint_dir)
        latest = ckpt.latest_checkpoint(folder)
        state = ckpt.load_checkpoint(latest) if latest else None
        distributed.barrier(self.ranks)
        if state is not None and state["fingerprint"] != self.fingerprint:
            if self.ranks.is_main:
                print(f"train: {folder} holds checkpoints of another run (params, data or world size differ); "
                      "starting afresh", file=sys.stderr)
                ckpt.clear(folder)
            state = None
        if state is None:
            return
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        _set_rng_state(self.model, state["rng"][self.ranks.rank])
        self.step, self.skipped_steps = state["step"], state["skipped_steps"]
        if self.ranks.is_main:
            print(f"train: resumed from {latest}", file=sys.stderr)

    def save_checkpoint(self) -> None:
        if not _all_finite(self.model):
            raise NonFiniteLossError(f"step {self.step}: parameters are not finite; no checkpoint written")
        rng = distributed.gather_objects(_rng_state(self.model), self.ranks)
        if self.ranks.is_main:
            state = {"step": self.step, "fingerprint": self.fingerprint, "skipped_steps": self.skipped_steps,
                     "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(), "rng": rng}
            folder = Path(self.dirs.checkpoint_dir)
            ckpt.save_atomic(state, ckpt.checkpoint_path(folder, self.step))
            ckpt.prune(folder, self.cfg.keep_checkpoints)
        distributed.barrier(self.ranks)

    # ---- the loop ---------------------------------------------------------------------------------------------

    def _batches(self):
        cfg, visual = self.cfg, self.model.clip.visual
        stream = TrainStream(self.layout, self.ranks.rank, cfg.batch_size // self.layout.streams_per_rank,
                             open_clip.image_transform(visual.image_size, is_train=False),
                             self.model.context_length, cfg.seed, cfg.shuffle_buffer,
                             start_chunk=self.step * cfg.grad_accum,
                             long_keys=_caption_keys(cfg), draw_one=not cfg.method_section.reads_all_captions)
        return micro_batches(stream, cfg.num_workers, pin_memory=self.ranks.device.type == "cuda")

    def _micro_step(self, net, batch, sync: bool) -> dict | None:
        """Forward + backward of one micro-batch; None (and no backward) if the loss is not finite."""
        images, long_tokens, short_tokens = (t.to(self.ranks.device, non_blocking=True) for t in batch)
        with contextlib.nullcontext() if sync or net is self.model else net.no_sync():
            with _autocast(self.cfg.precision, self.ranks.device):
                parts = self.loss(net(images, long_tokens, short_tokens))
            if distributed.any_rank(not bool(torch.isfinite(parts["loss"])), self.ranks):
                return None
            (parts["loss"] / self.cfg.grad_accum).backward()
        return {k: float(v.detach()) for k, v in parts.items()}

    def _non_finite(self, step: int) -> None:
        if self.cfg.nan_policy == "error":
            raise NonFiniteLossError(f"step {step}: the loss is not finite (NaN or inf); stopping before the "
                                     f"optimizer step. Last checkpoint: {ckpt.latest_checkpoint(self.dirs.checkpoint_dir)}")
        self.skipped_steps += 1
        if self.ranks.is_main:
            print(f"train: step {step}: loss not finite, step skipped (nan_policy: skip)", file=sys.stderr)

    def run(self) -> dict | None:
        cfg = self.cfg
        net = self.model
        if self.ranks.world_size > 1:
            device_ids = [self.ranks.device] if self.ranks.device.type == "cuda" else None
            net = DistributedDataParallel(self.model, device_ids=device_ids)
        batches = self._batches()
        log = TrainLog(self.dirs.log_dir, self.total_steps, self.step, self.samples_per_step, cfg.log_every,
                       self.dirs.progress) if self.ranks.is_main else None
        start_step, started, last = self.step, time.perf_counter(), {}
        timer = StepTimer()
        try:
            while self.step < self.total_steps:
                lr = cosine_lr(self.step, cfg.lr, cfg.warmup_steps, self.total_steps)
                set_lr(self.optimizer, lr)
                self.model.start_step(self.step)
                parts = []
                for i in range(cfg.grad_accum):
                    batch = next(batches)
                    if len(parts) == i:  # after a non-finite micro-step, only consume the data
                        result = self._micro_step(net, batch, sync=i == cfg.grad_accum - 1)
                        if result is not None:
                            parts.append(result)
                if len(parts) == cfg.grad_accum:
                    self.optimizer.step()
                    for scale in self.model.logit_scales():
                        clamp_logit_scale(scale, cfg.logit_scale_max)
                else:
                    self._non_finite(self.step + 1)
                self.optimizer.zero_grad(set_to_none=True)
                self.step += 1
                seconds = timer.lap()
                if parts:
                    last = {k: sum(p[k] for p in parts) / len(parts) for k in parts[0]}
                    last.update(lr=lr, logit_scale=float(self.model.logit_scale.detach().exp()),
                                samples_per_s=self.samples_per_step / seconds)
                    if log is not None:
                        log.step(self.step, last)
                if self.step % cfg.checkpoint_every == 0 and self.step < self.total_steps:
                    self.save_checkpoint()
        finally:
            if log is not None:
                log.close()
        elapsed = time.perf_counter() - started
        if not _all_finite(self.model):
            raise NonFiniteLossError(f"step {self.step}: parameters are not finite; the model is not written")
        if not self.ranks.is_main:
            return None
        save_model_folder(self.model, cfg.base_model.config, self.dirs.out_dir)
        trained = (self.step - start_step) * self.samples_per_step
        return {"steps": self.step, "samples": self.step * self.samples_per_step,
                "samples_per_step": self.samples_per_step, "world_size": self.ranks.world_size,
                "resumed_from_step": start_step, "skipped_steps": self.skipped_steps,
                "samples_per_s": trained / elapsed if elapsed > 0 else 0.0,
                **{f"final_{k}": v for k, v in last.items() if k != "samples_per_s"}}


def train(cfg: TrainConfig, dirs: RunDirs) -> dict | None:
    """Train (resuming from ``dirs.checkpoint_dir`` if it holds this run's checkpoints) and write ``dirs.out_dir``.

    Returns the run's metrics on the main rank, None on the others."""
    check_config(cfg)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    ranks = distributed.setup(cfg.device)
    try:
        run = _Run(cfg, dirs, ranks)
        run.resume()
        return run.run()
    finally:
        distributed.teardown(ranks)

