"""DVC stage `train`: data/shards/train + base CLIP -> models/fixclip/ + metrics/train.json + dvclive/train/.

One process by default; with `train.distributed.nproc_per_node > 1` the stage re-launches itself under torchrun on
this node; started by torchrun (any number of nodes) it trains as its rank. Killed, it resumes from
checkpoints/train/ on the next run.
"""
import subprocess
from pathlib import Path

from fixclip.config import FixClipConfig
from fixclip.train import check_config, train
from fixclip.train_config import TrainConfig
from fixclip.train_distributed import torchrun_command, under_torchrun
from pipeline.outputs import write_json
from pipeline.params import ParamsError, exit_on_params_error, load_params
from pipeline.train_params import TrainParams

MODEL_DIR = Path("models/fixclip")
CHECKPOINTS = Path("checkpoints/train")
CURVES = Path("dvclive/train")
METRICS = Path("metrics/train.json")


def train_config(params: TrainParams) -> TrainConfig:
    """Map the validated `train:` section onto the library's run description."""
    fix = params.fixclip.model_dump()
    fix["hfa_weights"] = tuple(fix["hfa_weights"])
    return TrainConfig(
        shards=params.shards, base_model=params.base_model.config, base_weights=params.base_model.weights,
        out_dir=str(MODEL_DIR), checkpoint_dir=str(CHECKPOINTS), log_dir=str(CURVES),
        fixclip=FixClipConfig(**fix), batch_size=params.batch_size, grad_accum=params.grad_accum,
        epochs=params.epochs, samples=params.samples, lr=params.lr, weight_decay=params.weight_decay,
        betas=tuple(params.betas), eps=params.eps, warmup_steps=params.warmup_steps,
        logit_scale_init=params.logit_scale_init, logit_scale_max=params.logit_scale_max,
        precision=params.precision, device=params.device, seed=params.seed, threads=params.threads,
        checkpoint_every=params.checkpoint_every, keep_checkpoints=params.keep_checkpoints,
        nan_policy=params.nan_policy, num_workers=params.num_workers, shuffle_buffer=params.shuffle_buffer,
        log_every=params.log_every)


def checked_config(params: TrainParams) -> TrainConfig:
    """The run description, checked against the base model (e.g. num_prompts must divide its patches)."""
    base = params.base_model
    for key, path in (("config", base.config), ("weights", base.weights)):
        if (key == "weights" or path.endswith(".json")) and not Path(path).is_file():
            raise ParamsError(f"params.yaml: invalid params\n  train.base_model.{key}: file not found: {path!r}")
    cfg = train_config(params)
    try:
        check_config(cfg)
    except ValueError as exc:
        raise ParamsError(f"params.yaml: invalid params\n  train.{exc}") from None
    return cfg


def main() -> None:
    params = load_params().train
    cfg = checked_config(params)
    wanted = params.distributed.nproc_per_node * params.distributed.nnodes
    if not under_torchrun() and wanted > 1:
        if params.distributed.nnodes > 1:
            raise ParamsError("params.yaml: invalid params\n  train.distributed.nnodes: several nodes need "
                              "`torchrun --nnodes N --nproc-per-node P ... -m stages.train` started on every node")
        raise SystemExit(subprocess.call(torchrun_command("stages.train", params.distributed.nproc_per_node)))
    metrics = train(cfg)
    if metrics is not None:
        write_json(METRICS, metrics)
        print(f"train: {metrics['steps']} steps, {metrics['samples']} samples, "
              f"{metrics['samples_per_s']:.1f} samples/s, final loss {metrics.get('final_loss', float('nan')):.4f}")


if __name__ == "__main__":
    with exit_on_params_error():
        main()
