"""Shard stage vs `tar cf` on the same image files, side by side in one run.

    python bench/shard.py [--images 5000] [--repeats 3]

Builds an img2dataset-shaped raw folder (random 64x64 JPEGs) with a caption per image, then times the shard stage's
library call (read raw tars, check every image decodes, join captions, write deterministic shards) against `tar cf`
of the same JPEG files from a folder. Both rates count image bytes; goal: stage / tar >= 0.5.
"""
import argparse
import io
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

from pipeline import shards  # noqa: E402
from pipeline.params import ShardParams  # noqa: E402


def make_inputs(work: Path, count: int, per_shard: int = 1000) -> int:
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
                Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buffer, format="JPEG")
                data = buffer.getvalue()
                total += len(data)
                (work / "files" / f"{key}.jpg").write_bytes(data)
                info = tarfile.TarInfo(f"{key}.jpg")
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))
                rows.append({"key": key, "uid": f"u{i}", "status": "success", "caption": "alt",
                             "original_width": 64, "original_height": 64})
                captions.append({"key": key, "caption": "A caption. With two sentences.", "status": "ok",
                                 "prompt_id": 0, "model": "m"})
        pd.DataFrame(rows).to_parquet(work / "raw" / f"{name}.parquet")
        pd.DataFrame(captions).to_parquet(work / "captions" / f"{name}.parquet")
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-shard-") as tmp:
        work = Path(tmp)
        total = make_inputs(work, args.images)
        stage_s, tar_s = [], []
        for _ in range(args.repeats):
            shutil.rmtree(work / "out", ignore_errors=True)
            start = time.perf_counter()
            shards.run(ShardParams(), work / "raw", work / "captions", work / "out")
            stage_s.append(time.perf_counter() - start)
            (work / "files.tar").unlink(missing_ok=True)
            start = time.perf_counter()
            subprocess.run(["tar", "cf", str(work / "files.tar"), "-C", str(work / "files"), "."], check=True)
            tar_s.append(time.perf_counter() - start)
    stage_rate = total / statistics.median(stage_s) / 2**20
    tar_rate = total / statistics.median(tar_s) / 2**20
    print(f"images: {args.images}, image bytes: {total / 2**20:.1f} MiB, repeats: {args.repeats}")
    print(f"shard stage: {stage_rate:8.1f} MiB/s  (runs: {', '.join(f'{s:.2f}s' for s in stage_s)})")
    print(f"tar cf     : {tar_rate:8.1f} MiB/s  (runs: {', '.join(f'{s:.2f}s' for s in tar_s)})")
    print(f"ratio stage/tar: {stage_rate / tar_rate:.3f}  (goal >= 0.5)")


if __name__ == "__main__":
    main()
