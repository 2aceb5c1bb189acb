"""DVC stage `train`: data/shards/train + base CLIP -> models/fixclip/ + metrics/train.json + dvclive/train/.

One process by default; with `train.distributed.nproc_per_node > 1` the stage re-launches itself under torchrun on
this node; started by torchrun (any number of nodes) it trains as its rank. With `train.distributor: ray` it joins
the Ray cluster and trains on `train.ray.workers` Ray Train workers. Killed, it resumes from checkpoints/train/ on
the next run.
"""
import math
import subprocess
from pathlib import Path

from fixclip.train.config import RunDirs
from fixclip.train.distributed import torchrun_command, under_torchrun
from fixclip.train.loop import check_config, train
from core.outputs import write_json
from pipeline.params import PARAMS_FILE, ParamsError, exit_on_params_error, load_params
from pipeline.params.train import TrainParams
from core.ray_session import RayClusterError, ray_session, require_ray

DIRS = RunDirs(out_dir="models/fixclip", checkpoint_dir="checkpoints/train", log_dir="dvclive/train")
METRICS = Path("metrics/train.json")


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


def train_on_ray(params: TrainParams) -> dict:
    """The run on Ray Train workers of the cluster at `train.ray.address` (or RAY_ADDRESS, or a local instance)."""
    require_ray("train.distributor")
    from fixclip.train import ray_trainer

    with ray_session(params.ray.address, "train.ray.address",
                     num_cpus=math.ceil(params.ray.workers * params.ray.cpus_per_worker)):
        return ray_trainer.fit(params, DIRS)


def main() -> None:
    params = load_params().train
    check_fits_base_model(params)
    if params.distributor == "ray":
        metrics = train_on_ray(params)
        write_json(METRICS, metrics)
        print(f"train: {metrics['steps']} steps on {params.ray.workers} Ray Train workers "
              f"({metrics['ray']['restarts']} restarts), final loss {metrics.get('final_loss', float('nan')):.4f}")
        return
    wanted = params.distributed.nproc_per_node * params.distributed.nnodes
    if not under_torchrun() and wanted > 1:
        if params.distributed.nnodes > 1:
            raise ParamsError.invalid(PARAMS_FILE, ["train.distributed.nnodes: several nodes need `torchrun --nnodes N "
                                                    "--nproc-per-node P ... -m stages.train` started on every node"])
        raise SystemExit(subprocess.call(torchrun_command("stages.train", params.distributed.nproc_per_node)))
    metrics = train(params, DIRS)
    if metrics is not None:
        write_json(METRICS, metrics)
        print(f"train: {metrics['steps']} steps, {metrics['samples']} samples, "
              f"{metrics['samples_per_s']:.1f} samples/s, final loss {metrics.get('final_loss', float('nan')):.4f}")


if __name__ == "__main__":
    with exit_on_params_error(RayClusterError):  # an unreachable train.ray.address is one line too
        main()
