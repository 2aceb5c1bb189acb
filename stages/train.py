"""DVC stage `train`: `train.shards` + base CLIP -> --model (a model folder) + --metrics + --curves (dvclive).

One process by default; with `train.distributed.nproc_per_node > 1` the stage re-launches itself under torchrun on
this node; started by torchrun (any number of nodes) it trains as its rank. With `train.distributor: ray` it joins
the Ray cluster and trains on `train.ray.workers` Ray Train workers. Killed, it resumes from --checkpoints on the
next run.
"""
import math
import subprocess
import sys
from pathlib import Path

from fixclip.train.config import RunDirs
from fixclip.train.distributed import torchrun_command, under_torchrun
from fixclip.train.loop import check_config, train
from core.outputs import write_json
from pipeline.params import PARAMS_FILE, ParamsError, exit_on_params_error, load_params
from pipeline.params.train import TrainParams
from core.ray_session import RayClusterError, ray_session, require_ray
from pipeline.stage_args import stage_paths


def check_fits_base_model(params: TrainParams) -> None:
    """The checks that need the base model's files (e.g. prompt_grid must fit its patch grid), before any work."""
    base = params.base_model
    for key, path in (("config", base.config), ("weights", base.weights)):
        if (key == "weights" or path.endswith(".json")) and not Path(path).is_file():
            raise ParamsError.invalid(PARAMS_FILE, [f"train.base_model.{key}: file not found: {path!r}"])
    try:
        check_config(params)
    except ValueError as exc:
        raise ParamsError.invalid(PARAMS_FILE, [f"train.{exc}"]) from None


def train_on_ray(params: TrainParams, dirs: RunDirs) -> dict:
    """The run on Ray Train workers of the cluster at `train.ray.address` (or RAY_ADDRESS, or a local instance)."""
    require_ray("train.distributor")
    from fixclip.train import ray_trainer

    with ray_session(params.ray.address, "train.ray.address",
                     num_cpus=math.ceil(params.ray.workers * params.ray.cpus_per_worker)):
        return ray_trainer.fit(params, dirs)


def main() -> None:
    args = stage_paths("train", "model", "checkpoints", "curves", "metrics")
    dirs = RunDirs(out_dir=args.model, checkpoint_dir=args.checkpoints, log_dir=args.curves)
    params = load_params().train
    check_fits_base_model(params)
    if params.distributor == "ray":
        metrics = train_on_ray(params, dirs)
        write_json(args.metrics, metrics)
        print(f"train: {metrics['steps']} steps on {params.ray.workers} Ray Train workers "
              f"({metrics['ray']['restarts']} restarts), final loss {metrics.get('final_loss', float('nan')):.4f}")
        return
    wanted = params.distributed.nproc_per_node * params.distributed.nnodes
    if not under_torchrun() and wanted > 1:
        if params.distributed.nnodes > 1:
            raise ParamsError.invalid(PARAMS_FILE, ["train.distributed.nnodes: several nodes need `torchrun --nnodes N "
                                                    "--nproc-per-node P ... -m stages.train` with this stage's "
                                                    "arguments started on every node"])
        command = torchrun_command("stages.train", params.distributed.nproc_per_node, sys.argv[1:])
        raise SystemExit(subprocess.call(command))
    metrics = train(params, dirs)
    if metrics is not None:
        write_json(args.metrics, metrics)
        print(f"train: {metrics['steps']} steps, {metrics['samples']} samples, "
              f"{metrics['samples_per_s']:.1f} samples/s, final loss {metrics.get('final_loss', float('nan')):.4f}")


if __name__ == "__main__":
    with exit_on_params_error(RayClusterError):  # an unreachable train.ray.address is one line too
        main()
