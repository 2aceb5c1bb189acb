"""Shard stage vs `tar cf` on the same image files, side by side in one run.

    python bench/shard.py [--images 5000] [--repeats 5] [--sizes 64,256]

Builds an img2dataset-shaped raw folder of random JPEGs (64 px: the toy world's ~3 KB images; 256 px:
img2dataset's default size, ~40 KB) with a caption per image, then times the shard stage's library call (read raw
tars, check every image, join captions, write deterministic shards) against `tar cf` of the same JPEG files from a
folder, for `shard.check_images` decode and header and `shard.workers` 1 and 2. Both rates count image bytes; goal:
stage / tar >= 0.5. Runs alternate (stage configs, then tar) after one warm-up each.

A second anchor, for the header check: `tar cf` of the members the stage writes (image, long.txt, short.txt, json
per sample, extracted from its shards), i.e. tar doing the same writing. It shows how much of the gap is the three
text members per image rather than the stage's own work.

Also printed, not a goal: each config's fixed cost per run (the stage and `tar cf` on 20 images in 2 raw tars, timed
in the same rounds) and the ratio of the per-image rates once it is taken off, i.e. the ratio a much larger input
tends to.
"""
import argparse
import io
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.report import emit  # noqa: E402
from pipeline.shard import writer  # noqa: E402
from pipeline.params import ShardParams  # noqa: E402


def make_inputs(work: Path, count: int, size: int = 64, per_shard: int = 1000) -> int:
    """Raw shards + captions + the same JPEGs as loose files; returns the image bytes."""
    rng = np.random.default_rng(0)
    (work / "raw").mkdir()
    (work / "captions").mkdir()
    (work / "files").mkdir()
    total = 0
    for shard in range(0, count, per_shard):
        name = f"{shard // per_shard:05d}"
        rows, captions = [], []
        with tarfile.open(work / "raw" / f"{name}.tar", "w") as archive:
            for i in range(shard, min(shard + per_shard, count)):
                key = f"{name}{i:05d}"
                buffer = io.BytesIO()
                Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(buffer, format="JPEG")
                data = buffer.getvalue()
                total += len(data)
                (work / "files" / f"{key}.jpg").write_bytes(data)
                info = tarfile.TarInfo(f"{key}.jpg")
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))
                rows.append({"key": key, "uid": f"u{i}", "status": "success", "caption": "alt",
                             "original_width": size, "original_height": size})
                captions.append({"key": key, "caption": "A caption. With two sentences.", "status": "ok",
                                 "prompt_id": 0, "model": "m"})
        pd.DataFrame(rows).to_parquet(work / "raw" / f"{name}.parquet")
        pd.DataFrame(captions).to_parquet(work / "captions" / f"{name}.parquet")
    return total


CONFIGS = [("decode", 1), ("decode", 2), ("header", 1), ("header", 2)]  # decode with 2 workers: the default
FIXED_IMAGES = 20  # the input whose run time stands for a run's fixed cost


def time_stage(work: Path, check: str, workers: int) -> float:
    shutil.rmtree(work / "out", ignore_errors=True)
    start = time.perf_counter()
    writer.run(ShardParams(check_images=check, workers=workers), work / "raw", work / "captions", work / "out")
    return time.perf_counter() - start


def time_tar(work: Path, folder: str = "files") -> float:
    (work / f"{folder}.tar").unlink(missing_ok=True)
    start = time.perf_counter()
    subprocess.run(["tar", "cf", str(work / f"{folder}.tar"), "-C", str(work / folder), "."], check=True)
    return time.perf_counter() - start


def extract_members(work: Path) -> None:
    """The members of the stage's last shards as loose files in work/members."""
    (work / "members").mkdir()
    for shard in sorted((work / "out").glob("*/*.tar")):
        with tarfile.open(shard) as archive:
            archive.extractall(work / "members", filter="data")


def measure(size: int, images: int, repeats: int) -> list[dict]:
    """Rows (ours vs tar cf, MiB/s of image bytes) for one image size."""
    with tempfile.TemporaryDirectory(prefix="bench-shard-") as tmp:
        work, tiny = Path(tmp) / "full", Path(tmp) / "tiny"
        work.mkdir()
        tiny.mkdir()
        total = make_inputs(work, images, size)
        make_inputs(tiny, FIXED_IMAGES, size, per_shard=FIXED_IMAGES // 2)
        for config in CONFIGS:  # warm-up: page cache, imports, process pool start-up paths
            time_stage(work, *config)
            time_stage(tiny, *config)
        extract_members(work)
        time_tar(work)
        time_tar(work, "members")
        stage_s = {config: [] for config in CONFIGS}
        fixed_s = {config: [] for config in CONFIGS}
        tar_s, members_s, tar_fixed_s = [], [], []
        for _ in range(repeats):
            for config in CONFIGS:
                stage_s[config].append(time_stage(work, *config))
                fixed_s[config].append(time_stage(tiny, *config))
            tar_s.append(time_tar(work))
            members_s.append(time_tar(work, "members"))
            tar_fixed_s.append(time_tar(tiny))
    tar_rate = total / statistics.median(tar_s) / 2**20
    members_rate = total / statistics.median(members_s) / 2**20
    print(f"{size} px: {images} images, {total / 2**20:.1f} MiB; tar cf {tar_rate:.1f} MiB/s "
          f"(runs: {', '.join(f'{s:.3f}s' for s in tar_s)}); tar cf of the stage's members {members_rate:.1f} MiB/s "
          f"of images (runs: {', '.join(f'{s:.3f}s' for s in members_s)})")
    tar_fixed = statistics.median(tar_fixed_s)
    rows = []
    for (check, workers), times in stage_s.items():
        rate = total / statistics.median(times) / 2**20
        fixed = statistics.median(fixed_s[(check, workers)])
        per_image = (statistics.median(tar_s) - tar_fixed) / (statistics.median(times) - fixed)
        print(f"  shard stage, check_images={check}, workers={workers}: {rate:8.1f} MiB/s  ratio vs tar "
              f"{rate / tar_rate:.3f} (goal >= 0.5)  vs tar of the same members {rate / members_rate:.3f}  "
              f"runs: {', '.join(f'{s:.3f}s' for s in times)}")
        print(f"    fixed cost per run {fixed * 1000:.0f} ms (tar cf {tar_fixed * 1000:.0f} ms); without it, "
              f"ratio vs tar {per_image:.3f}")
        name = f"shard {size}px, check {check}, {workers} worker{'s' * (workers > 1)}"
        rows.append({"name": name, "ours": rate, "anchor": tar_rate, "anchor_name": "tar cf", "unit": "MiB/s",
                     "goal": ">= 0.5"})
        if check == "header":
            rows.append({"name": f"{name}, same members", "ours": rate, "anchor": members_rate,
                         "anchor_name": "tar cf of the members", "unit": "MiB/s", "goal": ">= 0.5"})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--sizes", default="64,256", help="image sizes in pixels, comma-separated")
    args = parser.parse_args()
    if args.images <= FIXED_IMAGES:
        parser.error(f"--images must be more than {FIXED_IMAGES}, the input that stands for a run's fixed cost")
    print(f"repeats: {args.repeats}, {os.cpu_count()} cores")
    rows = [row for size in map(int, args.sizes.split(",")) for row in measure(size, args.images, args.repeats)]
    emit("shard", rows)


if __name__ == "__main__":
    main()
