"""Train-stage throughput: our loop with all FIX-CLIP modules off vs open_clip_train, and loader vs consumption.

Rows (samples/s, median of per-step rates after warm-up, all measured in this one run on the same tiny backbone,
shards, batch size, data workers and threads):
  open_clip_train   python -m open_clip_train.main (model config registered with open_clip.add_model_config,
                    --pretrained = assets/base_clip/weights.pt, fp32, resampled webdataset shards, a log line
                    every step)
  ours, modules off python -m fixclip.train with FixClipConfig.plain() (a DVCLive row every step)
                                                                              -> ratio vs open_clip_train (goal >= 1.0)
  loader alone      our train stream + DataLoader, no model                   -> ratio vs our train step (goal >= 3)
Both trainers read the same tars (each sample carries .txt for open_clip_train and .long.txt/.short.txt for us); the
long captions exceed 77 tokens, so both tokenize to 77 full positions. Both per-step rates are taken the same way:
the time from one step's end to the next, data wait and the previous step's logging included. The two trainers run
alternately for --rounds rounds (the order swapped each round) so that drifting load on shared cores hits both;
each figure is the median over rounds of the per-round medians. Ends with one JSON result line (bench/report.py).
Prints figures only; speed is not asserted.  Run:  python bench/train.py [--batch 32 --steps 40 --threads 1]
"""
import argparse
import csv
import io
import json
import os
import re
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the repository root, when run as a script
from bench.report import emit  # noqa: E402
from fixclip.config import FixClipConfig  # noqa: E402
from fixclip.train.config import BaseModelConfig, TrainConfig  # noqa: E402

WORDS = "red green blue yellow purple circle square triangle star ring left right top bottom small large".split()
MODEL_NAME = "fixclip-bench-tiny"
OPEN_CLIP_TRAIN = ("import sys, open_clip; open_clip.add_model_config(sys.argv.pop(1)); "
                   "from open_clip_train.main import main; main(sys.argv[1:])")


def write_shards(folder: Path, samples: int, per_shard: int) -> list[str]:
    """Shards of 64 px JPEGs with a long caption (> 77 tokens), a short one, and .txt = the long one."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    paths = []
    for shard in range(samples // per_shard):
        path = folder / f"train-{shard:06d}.tar"
        with tarfile.open(path, "w") as archive:
            for i in range(shard * per_shard, (shard + 1) * per_shard):
                image = io.BytesIO()
                Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(image, format="JPEG")
                long = " ".join(rng.choice(WORDS, 90)) + "."
                members = {"jpg": image.getvalue(), "txt": long.encode(), "long.txt": long.encode(),
                           "short.txt": " ".join(rng.choice(WORDS, 6)).encode(), "json": b"{}"}
                for ext, data in members.items():
                    info = tarfile.TarInfo(f"{i:08d}.{ext}")
                    info.size = len(data)
                    archive.addfile(info, io.BytesIO(data))
        paths.append(str(path))
    return paths


def _env(threads: int) -> dict:
    return {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(REPO), "NO_ALBUMENTATIONS_UPDATE": "1"}


def median_after_warmup(rates: list[float], warmup: int) -> float:
    return statistics.median(rates[warmup:])


def run_ours(work: Path, shards: Path, args) -> list[float]:
    cfg = TrainConfig(shards=str(shards), base_model=BaseModelConfig(config=str(REPO / "assets/base_clip/model.json"),
                                                                     weights=str(REPO / "assets/base_clip/weights.pt")),
                      fixclip=FixClipConfig.plain(), batch_size=args.batch, epochs=None, samples=args.batch * args.steps,
                      lr=5e-4, warmup_steps=2, threads=args.threads, num_workers=args.workers,
                      checkpoint_every=10 ** 9, device="cpu")
    work.mkdir()
    (work / "run.json").write_text(cfg.model_dump_json())
    subprocess.run([sys.executable, "-m", "fixclip.train", str(work / "run.json"), "--out", str(work / "model"),
                    "--checkpoints", str(work / "checkpoints"), "--curves", str(work / "curves"), "--no-progress"],
                   cwd=REPO, check=True, env=_env(args.threads), capture_output=True)
    with open(work / "curves/plots/metrics/train/samples_per_s.tsv") as f:
        return [float(row["samples_per_s"]) for row in csv.DictReader(f, delimiter="\t")]


def run_open_clip_train(work: Path, shard_paths: list[str], args) -> list[float]:
    configs = work / "configs"
    configs.mkdir(parents=True)
    (configs / f"{MODEL_NAME}.json").write_text((REPO / "assets/base_clip/model.json").read_text())
    pattern = str(Path(shard_paths[0]).parent / f"train-{{000000..{len(shard_paths) - 1:06d}}}.tar")
    proc = subprocess.run(
        [sys.executable, "-c", OPEN_CLIP_TRAIN, str(configs), "--train-data", pattern, "--dataset-type", "webdataset",
         "--dataset-resampled", "--train-num-samples", str(args.batch * args.steps), "--batch-size", str(args.batch),
         "--epochs", "1", "--workers", str(args.workers), "--model", MODEL_NAME,
         "--pretrained", str(REPO / "assets/base_clip/weights.pt"), "--precision", "fp32", "--lr", "5e-4",
         "--wd", "0.01", "--warmup", "2", "--log-every-n-steps", "1", "--save-frequency", "0",
         "--logs", str(work / "logs"), "--name", "bench", "--device", "cpu"],
        cwd=work, env=_env(args.threads), capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"open_clip_train failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return [float(x) for x in re.findall(r"Batch \(t\): [\d.]+, ([\d.]+)/s,", proc.stdout + proc.stderr)]


def loader_rate(shards: Path, args) -> list[float]:
    """Samples/s of the train stream alone (same workers, chunking, decode, transform, tokenisation)."""
    import open_clip

    from fixclip.train.data import (
        StreamLayout,
        TrainStream,
        count_samples,
        micro_batches,
        shard_list,
    )

    tars = shard_list(shards)
    layout = StreamLayout(tuple(tars), tuple(count_samples(t) for t in tars), 1, args.workers)
    stream = TrainStream(layout, 0, args.batch // max(1, args.workers), open_clip.image_transform(64, is_train=False),
                         77, seed=0, shuffle_buffer=1000)
    batches, rates = micro_batches(stream, args.workers), []
    for _ in range(args.steps):
        tick = time.perf_counter()
        next(batches)
        rates.append(args.batch / (time.perf_counter() - tick))
    return rates


def rounds(work: Path, shard_paths: list[str], args) -> tuple[list[float], list[float]]:
    """Per-round medians of open_clip_train and of ours, the two run alternately (order swapped every round)."""
    theirs, ours = [], []
    for r in range(args.rounds):
        runs = [(theirs, lambda d: run_open_clip_train(d, shard_paths, args)),
                (ours, lambda d: run_ours(d, work / "shards", args))]
        for i, (rates, run) in enumerate(runs if r % 2 == 0 else runs[::-1]):
            rates.append(median_after_warmup(run(work / f"round{r}-{i}"), args.warmup))
    return theirs, ours


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=5, help="steps left out of the medians")
    parser.add_argument("--rounds", type=int, default=4, help="alternating runs of each trainer")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        shard_paths = write_shards(work / "shards", samples=8 * args.batch, per_shard=2 * args.batch)
        theirs_rounds, ours_rounds = rounds(work, shard_paths, args)
        loader = median_after_warmup(loader_rate(work / "shards", args), args.warmup)
    theirs, ours = statistics.median(theirs_rounds), statistics.median(ours_rounds)
    print(json.dumps({"batch": args.batch, "steps": args.steps, "threads": args.threads, "workers": args.workers,
                      "rounds": args.rounds}))
    print("per-round ratios ours / open_clip_train: "
          + ", ".join(f"{o / t:.2f}" for o, t in zip(ours_rounds, theirs_rounds)))
    print(f"{'open_clip_train':<20}{theirs:10.1f} samples/s")
    print(f"{'ours, modules off':<20}{ours:10.1f} samples/s   ratio vs open_clip_train {ours / theirs:.2f}x "
          "(goal >= 1.0)")
    print(f"{'loader alone':<20}{loader:10.1f} samples/s   ratio vs our train step {loader / ours:.2f}x (goal >= 3)")
    emit("train", [
        {"name": "train loop, modules off", "ours": ours, "anchor": theirs, "anchor_name": "open_clip_train",
         "unit": "samples/s", "goal": ">= 1.0"},
        {"name": "loader", "ours": loader, "anchor": ours, "anchor_name": "train step consumption",
         "unit": "samples/s", "goal": ">= 3"},
    ])


if __name__ == "__main__":
    main()
