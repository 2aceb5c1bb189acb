"""Report near copies of benchmark images before a run costs money.

    python -m pipeline.decontaminate --images FOLDER [--fingerprints data/benchmark_fingerprints] [--threshold T]
    python -m pipeline.decontaminate --raw data/raw [...]

Checks every image of a local folder (recursively), or of a downloaded raw folder (img2dataset's tars and parquets,
e.g. after `dvc repro download`), against the benchmark fingerprints the `benchmarks` stage wrote, exactly as the
shard stage would, and prints each match (image, benchmark, benchmark image, distance) and the counts. Nothing is
trained or written unless --out names a CSV for the matches. Exit status: 0 no copies, 1 copies found, 2 bad input.
The threshold and download.resize_mode default to params.yaml's (shard.decontaminate_threshold); without a
params.yaml, to the schema's defaults.
"""
import csv
import sys
from collections import Counter
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from core.cli import ArgumentParser, UserError, existing_folder, user_errors
from pipeline.decontaminate.downloaded import Decontamination
from pipeline.decontaminate.index import FingerprintError, read
from pipeline.params import PARAMS_FILE, Params, load_params
from pipeline.paths import pipeline_paths
from pipeline.raw_shards import ShardInputError, mapped, read_records, scan_raw_tar, values

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
BATCH = 256


def image_files(root: Path) -> list[Path]:
    """Every image file under root, in path order."""
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def folder_images(paths: list[Path]):
    """(name, bytes, original size) of each image file."""
    for path in paths:
        yield str(path), path.read_bytes(), None


def raw_images(raw: Path):
    """(raw shard/key, bytes, original size) of every successful download of an img2dataset folder."""
    tars = sorted(raw.glob("*.tar"))
    if not tars:
        raise UserError(f"{raw}: no img2dataset tars (*.tar) here")
    for tar in tars:
        records, _ = read_records(tar.with_suffix(".parquet"))
        sizes = dict(zip(values(records, "key"), zip(values(records, "original_width"),
                                                    values(records, "original_height"))))
        members = scan_raw_tar(tar)
        with mapped(tar) as data:
            for key, (offset, size) in sorted(members.items()):
                width, height = sizes.get(key, (None, None))
                original = (int(width), int(height)) if pd.notna(width) and pd.notna(height) else None
                yield f"{tar.stem}/{key}", bytes(data[offset:offset + size]), original


def check(images, decontamination: Decontamination, total: int | None):
    """(name, match) per matched image, and the counts."""
    counts, matches, batch = Counter(), [], []

    def flush():
        for (name, _, _), found in zip(batch, decontamination.check([b[1] for b in batch], [b[2] for b in batch])):
            counts["checked"] += 1
            if found == "undecodable":
                counts["unreadable"] += 1
            elif found is not None:
                matches.append((name, found))
        batch.clear()

    for image in tqdm(images, total=total, desc="decontaminate: check", unit="img"):
        batch.append(image)
        if len(batch) == BATCH:
            flush()
    flush()
    return matches, counts


def main(argv=None) -> int:
    parser = ArgumentParser(prog="python -m pipeline.decontaminate", description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--images", type=existing_folder, help="a folder of image files (searched recursively)")
    source.add_argument("--raw", type=existing_folder, help="an img2dataset output folder (tars and parquets)")
    parser.add_argument("--fingerprints", type=Path, default=Path(pipeline_paths()["fingerprints"]),
                        help="the benchmarks stage's output (default: %(default)s, dvc.yaml's)")
    parser.add_argument("--threshold", type=float, help="aligned distance of a copy (default: params.yaml's)")
    parser.add_argument("--resize-mode", help="download.resize_mode of --raw (default: params.yaml's)")
    parser.add_argument("--out", type=Path, help="also write the matches to this CSV")
    args = parser.parse_args(argv)
    params = load_params() if Path(PARAMS_FILE).exists() else Params()
    threshold = params.shard.decontaminate_threshold if args.threshold is None else args.threshold
    if not 0 < threshold < 1:
        raise UserError(f"--threshold: {threshold} is not in (0, 1)")
    items, _, _ = read(args.fingerprints)
    decontamination = Decontamination(args.fingerprints, threshold,
                                      args.resize_mode or params.download.resize_mode)
    if args.images:
        paths = image_files(args.images)
        matches, counts = check(folder_images(paths), decontamination, len(paths))
    else:
        matches, counts = check(raw_images(args.raw), decontamination, None)
    for name, match in matches:
        print(f"{name}: copy of {match.item} ({match.benchmark}), distance {match.distance:.4f}")
    per_benchmark = Counter(b for _, match in matches for b in match.benchmark.split(","))
    print(f"decontaminate: {counts['checked']} images checked against {len(items)} benchmark images: "
          f"{len(matches)} copies" + (f" ({', '.join(f'{b} {n}' for b, n in sorted(per_benchmark.items()))})"
                                      if matches else "") + f", {counts['unreadable']} unreadable")
    if args.out:
        with open(args.out, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["image", "benchmark", "benchmark_item", "distance"])
            writer.writerows([name, m.benchmark, m.item, m.distance] for name, m in matches)
    return 1 if matches else 0


if __name__ == "__main__":
    with user_errors(FingerprintError, ShardInputError):
        code = main()
    sys.exit(code)
