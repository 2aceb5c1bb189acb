"""Train outside DVC, on one process or under torchrun (DDP: gloo on CPU, nccl on CUDA):

    python -m fixclip.train RUN.json --out models/run --checkpoints checkpoints/run [--curves dvclive/run]
    torchrun --nproc-per-node 2 -m fixclip.train RUN.json --out ... --checkpoints ...

RUN.json is a ``TrainConfig``: the `train:` section of params.yaml as JSON (``TrainConfig.model_dump_json()``).
Rerun the same command after a kill and it resumes from the checkpoints folder.
"""
import argparse
from pathlib import Path

from .config import RunDirs, TrainConfig
from .loop import train


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m fixclip.train", description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="TrainConfig JSON")
    parser.add_argument("--out", required=True, help="model folder to write")
    parser.add_argument("--checkpoints", required=True, help="checkpoint folder (resumed from when it holds this run)")
    parser.add_argument("--curves", default=None, help="DVCLive folder for the training curves")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args()
    cfg = TrainConfig.model_validate_json(args.run.read_text())
    metrics = train(cfg, RunDirs(args.out, args.checkpoints, args.curves, progress=not args.no_progress))
    if metrics is not None:
        print(metrics)


if __name__ == "__main__":
    main()
