"""Shard stage vs what a user would otherwise write shards with, side by side in one run.

    python bench/shard.py [--images 5000] [--repeats 5] [--sizes 64,256]

Builds an img2dataset-shaped raw folder of random JPEGs (64 px: the toy world's ~3 KB images; 256 px:
img2dataset's default size, ~40 KB) with a caption per image, then times the shard stage's library call (read raw
tars, check every image, join captions, write deterministic shards; decontamination off, as no anchor does it), in
a child process that imports what the stage imports (`stage_side`), for
`shard.check_images` decode and header and `shard.workers` 1 and 2, against, in the same rounds:
  webdataset's ShardWriter  the script a user would write with webdataset, in one process: read the raw parquet
                            records and captions (pandas), walk the raw tars (tarfile), check each image with Pillow
                            (decode: load every pixel; header: Image.open, which reads the header), join by key, build
                            the same long.txt, short.txt and json, and write the same samples in the same order and
                            shard split (taken from the stage's own output, so the anchor does no planning) with
                            wds.ShardWriter. Its shards are checked to hold the stage's members byte for byte.
                                                                                                   goal >= 2.0x
  tar cf of the members     `tar cf` of the stage's members (image, long.txt, short.txt, json per sample) as loose
                            files: tar doing the same writing, without reading, checking or joining. goal >= 0.8x
                            with the header check; with `decode` information only, as tar decodes nothing and
                            Pillow's decoding is most of the stage's time
  tar cf of the images      `tar cf` of the JPEG files alone: information, no goal.
All rates count image bytes (MiB/s). Runs alternate after one warm-up each.

Also printed, not a goal: each config's fixed cost per run (the stage and `tar cf` on 20 images in 2 raw tars, timed
in the same rounds) and the ratio of the per-image rates once it is taken off, i.e. the ratio a much larger input
tends to.
"""
import argparse
import io
import json
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
from pipeline.shard.short_text import first_sentence  # noqa: E402


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


def stage_params(check: str, workers: int) -> ShardParams:
    return ShardParams(check_images=check, workers=workers, decontaminate=False)


def time_stage(work: Path, check: str, workers: int) -> float:
    shutil.rmtree(work / "out", ignore_errors=True)
    start = time.perf_counter()
    writer.run(stage_params(check, workers), work / "raw", work / "captions", work / "out")
    return time.perf_counter() - start


def stage_side() -> None:
    """Runs in a child process that imports what the shard stage imports, one timed stage run per `<work> <check>
    <workers>` line on stdin: not in the process that runs the anchor, whose webdataset import loads torch, after
    which forking the stage's worker pool took ~45 ms instead of ~12 (measured), a cost the stage does not have."""
    for line in sys.stdin:
        work, check, workers = line.split()
        print(time_stage(Path(work), check, int(workers)), flush=True)


class StageSide:
    """The child running `stage_side`."""

    def __init__(self):
        self.proc = subprocess.Popen([sys.executable, __file__, "--stage-side"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)

    def time(self, work: Path, check: str, workers: int) -> float:
        self.proc.stdin.write(f"{work} {check} {workers}\n")
        self.proc.stdin.flush()
        answer = self.proc.stdout.readline()
        if not answer:
            sys.exit(f"the stage side exited ({self.proc.wait()}); see its output above")
        return float(answer)

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait()


def stage_layout(out: Path) -> dict[str, list[str]]:
    """The plan the anchor is given: each output shard (relative path) and its sample keys in order."""
    layout = {}
    for shard in sorted(out.glob("*/*.tar")):
        with tarfile.open(shard) as archive:
            names = archive.getnames()
        layout[str(shard.relative_to(out))] = list(dict.fromkeys(name.split(".", 1)[0] for name in names))
    return layout


def image_ok(data: bytes, check: str) -> bool:
    """The anchor's image check, as a user writes it with Pillow."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            if check == "decode":
                image.load()
        return True
    except Exception:  # noqa: BLE001 - any decoder failure drops the image
        return False


def shardwriter_anchor(work: Path, layout: dict[str, list[str]], check: str, out: Path) -> None:
    """Read, check, join and write the stage's samples with webdataset's ShardWriter (see the module doc)."""
    import webdataset as wds

    samples = {}
    for parquet in sorted((work / "raw").glob("*.parquet")):
        records = pd.read_parquet(parquet).set_index("key")
        captions = pd.read_parquet(work / "captions" / parquet.name).set_index("key")
        with tarfile.open(parquet.with_suffix(".tar")) as archive:
            for member in archive:
                key = member.name.rsplit(".", 1)[0]
                data = archive.extractfile(member).read()
                if key not in captions.index or not image_ok(data, check):
                    continue
                record, caption = records.loc[key], captions.loc[key]
                long_text, alt = caption["caption"], (record["caption"] or "").strip()
                meta = {"alt_text": record["caption"] or "", "caption_model": caption["model"], "key": key,
                        "original_size": [int(record["original_width"]), int(record["original_height"])],
                        "prompt_id": int(caption["prompt_id"]),
                        "short_text_rule": "alt_text" if alt else "first_sentence", "uid": record["uid"],
                        "url": record.get("url")}
                samples[record["uid"]] = {"__key__": record["uid"], "jpg": data, "long.txt": long_text,
                                          "short.txt": alt or first_sentence(long_text),
                                          "json": json.dumps(meta, sort_keys=True)}
    for split in ("train", "val"):
        shards = sorted(name for name in layout if name.startswith(f"{split}/"))
        if not shards:
            continue
        (out / split).mkdir(parents=True)
        per_shard = len(layout[shards[0]])
        with wds.ShardWriter(str(out / split / f"{split}-%06d.tar"), maxcount=per_shard, verbose=0) as sink:
            for name in shards:
                for uid in layout[name]:
                    sink.write(samples[uid])


def time_anchor(work: Path, layout: dict[str, list[str]], check: str) -> float:
    shutil.rmtree(work / "anchor", ignore_errors=True)
    start = time.perf_counter()
    shardwriter_anchor(work, layout, check, work / "anchor")
    return time.perf_counter() - start


def members(out: Path) -> dict[str, list[tuple[str, ...]]]:
    """Each shard's samples in order, as (member name, bytes) pairs sorted by name (ShardWriter sorts a sample's)."""
    found = {}
    for shard in sorted(out.glob("*/*.tar")):
        with tarfile.open(shard) as archive:
            pairs = [(m.name, archive.extractfile(m).read()) for m in archive]
        by_key = {}
        for name, data in pairs:
            by_key.setdefault(name.split(".", 1)[0], []).append((name, data))
        found[str(shard.relative_to(out))] = [tuple(sorted(sample)) for sample in by_key.values()]
    return found


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


def measure(stage: StageSide, size: int, images: int, repeats: int) -> list[dict]:
    """Rows (ours vs ShardWriter, vs tar cf of the same members, vs tar cf of the images; MiB/s of image bytes)."""
    checks = sorted({check for check, _ in CONFIGS})
    with tempfile.TemporaryDirectory(prefix="bench-shard-") as tmp:
        work, tiny = Path(tmp) / "full", Path(tmp) / "tiny"
        work.mkdir()
        tiny.mkdir()
        total = make_inputs(work, images, size)
        make_inputs(tiny, FIXED_IMAGES, size, per_shard=FIXED_IMAGES // 2)
        for config in CONFIGS:  # warm-up: page cache, imports, process pool start-up paths
            stage.time(work, *config)
            stage.time(tiny, *config)
        layout = stage_layout(work / "out")
        ours = members(work / "out")
        same = {}
        for check in checks:  # warm-up, and the anchor's shards must hold the stage's samples byte for byte
            time_anchor(work, layout, check)
            same[check] = members(work / "anchor") == ours
        extract_members(work)
        time_tar(work)
        time_tar(work, "members")
        stage_s = {config: [] for config in CONFIGS}
        fixed_s = {config: [] for config in CONFIGS}
        anchor_s = {check: [] for check in checks}
        tar_s, members_s, tar_fixed_s = [], [], []
        for _ in range(repeats):
            for config in CONFIGS:
                stage_s[config].append(stage.time(work, *config))
                fixed_s[config].append(stage.time(tiny, *config))
            for check in checks:
                anchor_s[check].append(time_anchor(work, layout, check))
            tar_s.append(time_tar(work))
            members_s.append(time_tar(work, "members"))
            tar_fixed_s.append(time_tar(tiny))

    def rate(times: list[float]) -> float:
        return total / statistics.median(times) / 2**20

    def runs(times: list[float]) -> str:
        return ", ".join(f"{t:.3f}s" for t in times)

    tar_rate, members_rate = rate(tar_s), rate(members_s)
    anchor_rate = {check: rate(times) for check, times in anchor_s.items()}
    print(f"{size} px: {images} images, {total / 2**20:.1f} MiB; tar cf of the images {tar_rate:.1f} MiB/s "
          f"(runs: {runs(tar_s)}); tar cf of the stage's members {members_rate:.1f} MiB/s (runs: {runs(members_s)})")
    for check, times in anchor_s.items():
        print(f"  ShardWriter script, {check} check: {anchor_rate[check]:.1f} MiB/s (runs: {runs(times)}); its "
              f"shards hold the stage's members byte for byte: {same[check]}")
    tar_fixed = statistics.median(tar_fixed_s)
    rows = []
    for (check, workers), times in stage_s.items():
        ours = rate(times)
        fixed = statistics.median(fixed_s[(check, workers)])
        per_image = (statistics.median(tar_s) - tar_fixed) / (statistics.median(times) - fixed)
        print(f"  shard stage, check_images={check}, workers={workers}: {ours:8.1f} MiB/s  vs ShardWriter "
              f"{ours / anchor_rate[check]:.3f} (goal >= 2.0)  vs tar cf of the members {ours / members_rate:.3f} "
              f"{'(goal >= 0.8)' if check == 'header' else '(no goal)'}  vs tar cf of the images "
              f"{ours / tar_rate:.3f}  runs: {runs(times)}")
        print(f"    fixed cost per run {fixed * 1000:.0f} ms (tar cf {tar_fixed * 1000:.0f} ms); without it, "
              f"ratio vs tar cf of the images {per_image:.3f}")
        name = f"shard {size}px, check {check}, {workers} worker{'s' * (workers > 1)}"
        rows += [
            {"name": f"{name} vs ShardWriter", "ours": ours, "anchor": anchor_rate[check],
             "anchor_name": f"webdataset ShardWriter script, {check} check", "unit": "MiB/s", "goal": ">= 2.0",
             **({} if same[check] else {"ok": False})},
            {"name": f"{name} vs tar, same members", "ours": ours, "anchor": members_rate,
             "anchor_name": "tar cf of the members", "unit": "MiB/s", "goal": ">= 0.8" if check == "header" else ""},
            {"name": f"{name} vs tar, images", "ours": ours, "anchor": tar_rate, "anchor_name": "tar cf of the images",
             "unit": "MiB/s", "goal": ""},
        ]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--sizes", default="64,256", help="image sizes in pixels, comma-separated")
    parser.add_argument("--stage-side", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.stage_side:
        stage_side()
        return
    if args.images <= FIXED_IMAGES:
        parser.error(f"--images must be more than {FIXED_IMAGES}, the input that stands for a run's fixed cost")
    print(f"repeats: {args.repeats}, {os.cpu_count()} cores")
    stage = StageSide()
    rows = [row for size in map(int, args.sizes.split(",")) for row in measure(stage, size, args.images, args.repeats)]
    stage.close()
    emit("shard", rows)


if __name__ == "__main__":
    main()
