"""Decontamination accuracy and cost: near copies of benchmark images found, other images left alone.

    python bench/decontaminate.py [--copies 200] [--thresholds 0.05,0.1,0.15,0.2] [--scale-items 20000]

Toy world: the default's held-out benchmark (evaluate.toy, ~2k images) is fingerprinted as the benchmarks stage
does; `--copies` of its images get every near copy of pipeline/decontaminate/copies.py, pass through img2dataset's
resizer with the default's download params (as an injected URL would), and are looked up as the shard stage does
(recall, per kind of copy). The default's 3000 training images, rendered and encoded the same way, are looked up too:
every match is a false positive (the held-out seed shares no scene with training), and so are their greyscale
versions looked up in luminance (the toy world has none; they show the grey path's rate).
Real photos: scikit-image's sample photos and its 200 LFW crops (25 x 25 faces and non-faces, which look alike)
are both the benchmark and the training set: each image's copies must match it (recall, at the paper profile's
384 px keep_ratio_largest download), and an image matching any *other* image is a false positive.
Cost: fingerprint and lookup per training image (decode, canonical picture, lookup, checks), against the toy
benchmark and against `--scale-items` benchmark images (toy renders of another seed: the worst case, since toy
scenes are near each other and give the check the most candidates).
Prints a table per threshold and ends with a JSON line: the cost as a bench row (images/s against the image
decode alone, which any shard check does anyway).
"""
import argparse
import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

from bench.report import emit  # noqa: E402
from pipeline.decontaminate import fingerprint  # noqa: E402
from pipeline.decontaminate.copies import COPIES  # noqa: E402
from pipeline.decontaminate.index import BenchmarkIndex, write  # noqa: E402
from pipeline.params import DownloadParams, EvaluateParams, SourceParams  # noqa: E402
from pipeline.toyworld import benchmark as toy_benchmark  # noqa: E402
from pipeline.toyworld.scenes import make_record  # noqa: E402


class Downloader:
    """img2dataset's resizer with the given download params: bytes in, (stored bytes, original size) out."""

    def __init__(self, image_size: int, resize_mode: str):
        from img2dataset.resizer import Resizer

        self.mode = resize_mode
        self.resizer = Resizer(image_size, resize_mode, False, encode_quality=95, encode_format="jpg")

    def __call__(self, data: bytes) -> tuple[bytes, tuple[int, int]]:
        stored, _, _, width, height, error = self.resizer(io.BytesIO(data))
        if error is not None:
            raise RuntimeError(error)
        return stored, (width, height)

    def picture(self, data: bytes) -> np.ndarray:
        """What the shard stage compares for an image whose original bytes are `data`."""
        stored, original = self(data)
        image = fingerprint.decode(stored)
        return fingerprint.canonical(image, fingerprint.content_box(image.size, original, self.mode))


def png(image: Image.Image) -> bytes:
    stream = io.BytesIO()
    image.save(stream, format="PNG")
    return stream.getvalue()


def build(folder: Path, names: list[str], benchmark: str, images: list[Image.Image]) -> BenchmarkIndex:
    pictures = np.stack([fingerprint.canonical(image) for image in images])
    write(folder, pd.DataFrame({"benchmark": benchmark, "item": names}), pictures)
    return BenchmarkIndex(folder)


def distances(index: BenchmarkIndex, pictures: list[np.ndarray], exclude: list[int] | None = None) -> np.ndarray:
    """Each picture's smallest checked distance to a candidate (1.0: none), leaving out item `exclude[i]`."""
    greys = [fingerprint.is_grey(p) for p in pictures]
    found = index.candidates(pictures, greys)
    out = np.ones(len(pictures))
    for i, (picture, grey, items) in enumerate(zip(pictures, greys, found)):
        query = fingerprint.check_picture(picture, grey)
        if query.std() <= 1e-3:
            continue
        for item in items:
            if exclude is not None and item == exclude[i]:
                continue
            out[i] = min(out[i], index.distance(query, item, grey))
    return out


def own_distances(index: BenchmarkIndex, pictures: list[np.ndarray], owners: list[int]) -> np.ndarray:
    """Each copy's checked distance to its own benchmark image if the lookup proposes it (else 1.0)."""
    greys = [fingerprint.is_grey(p) for p in pictures]
    found = index.candidates(pictures, greys)
    out = np.ones(len(pictures))
    for i, (picture, grey, items) in enumerate(zip(pictures, greys, found)):
        if owners[i] in items:
            out[i] = index.distance(fingerprint.check_picture(picture, grey), owners[i], grey)
    return out


def copy_distances(index, images, chosen, download, rng) -> dict[str, np.ndarray]:
    result = {}
    for kind, make in COPIES.items():
        pictures = [download.picture(make(images[i], rng)[0]) for i in chosen]
        result[kind] = own_distances(index, pictures, list(chosen))
    return result


def table(title: str, copies: dict, clean: dict, thresholds: list[float]) -> list[dict]:
    print(f"\n{title}")
    print("threshold | " + " | ".join(copies) + " | " + " | ".join(f"FP {k}" for k in clean))
    rows = []
    for t in thresholds:
        recall = {k: float((v <= t).mean()) for k, v in copies.items()}
        fp = {k: float((v <= t).mean()) for k, v in clean.items()}
        print(f"{t:.3f} | " + " | ".join(f"{r:.3f}" for r in recall.values()) + " | "
              + " | ".join(f"{f:.4f} ({int((clean[k] <= t).sum())}/{len(clean[k])})" for k, f in fp.items()))
        rows.append({"threshold": t, "recall": recall, "false_positive": fp})
    print("max distance of a copy: " + ", ".join(f"{k} {v.max():.3f}" for k, v in copies.items()))
    print("min distance of a non-copy: " + ", ".join(f"{k} {v.min():.3f}" for k, v in clean.items()))
    return rows


def real_photos() -> tuple[list[str], list[Image.Image]]:
    import skimage.data

    names, images = [], []
    for name in ("astronaut", "brick", "camera", "cat", "coffee", "coins", "grass", "gravel", "horse",
                 "hubble_deep_field", "immunohistochemistry", "microaneurysms", "moon", "page", "retina", "rocket",
                 "text", "cell", "clock", "colorwheel", "logo"):
        array = np.asarray(getattr(skimage.data, name)())
        if array.dtype == bool:
            array = array.astype(np.uint8) * 255
        names.append(name)
        images.append(Image.fromarray(array).convert("RGB"))
    for i, face in enumerate(skimage.data.lfw_subset()):
        names.append(f"lfw_{i:03d}")
        images.append(Image.fromarray((face * 255).round().astype(np.uint8)).convert("RGB"))
    return names, images


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--copies", type=int, default=200, help="toy benchmark images to copy")
    parser.add_argument("--thresholds", default="0.05,0.075,0.1,0.125,0.15")
    parser.add_argument("--scale-items", type=int, default=20000, help="benchmark images of the cost run")
    parser.add_argument("--cost-only", action="store_true", help="skip the accuracy tables")
    args = parser.parse_args()
    thresholds = [float(t) for t in args.thresholds.split(",")]
    rng = np.random.default_rng(0)
    world, download = SourceParams().toyworld, DownloadParams()
    train = [make_record(world.seed, i, world.image_size, world.grid, world.min_objects, world.max_objects,
                         world.textures).image for i in range(world.num_images)]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        report = {} if args.cost_only else accuracy(tmp, args, thresholds, rng, world, download, train)
        cost = measure_cost(tmp, args.scale_items, world, download, train)
    print(json.dumps({"accuracy": report, "cost": cost}))
    emit("decontaminate", [{"name": f"fingerprint + lookup ({args.scale_items} benchmark images)",
                            "ours": cost["images_per_s"], "anchor": cost["decode_images_per_s"],
                            "anchor_name": "decode alone", "unit": "images/s", "goal": ">= 0.0"}])


def accuracy(tmp: Path, args, thresholds, rng, world, download, train) -> dict:
    """The recall and false-positive tables (toy world, real photos)."""
    report = {}
    toy_benchmark.generate(EvaluateParams().toy, world, download, tmp / "toy")
    paths = sorted((tmp / "toy/images").iterdir())
    bench_images = [Image.open(p) for p in paths]
    for image in bench_images:
        image.load()
    index = build(tmp / "toy_index", [p.name for p in paths], "toy", bench_images)
    downloader = Downloader(download.image_size, download.resize_mode)
    chosen = rng.choice(len(bench_images), size=min(args.copies, len(bench_images)), replace=False)
    copies = copy_distances(index, bench_images, chosen, downloader, rng)
    train_pictures = [downloader.picture(png(image)) for image in train]
    clean = {"toy training": distances(index, train_pictures)}
    clean["toy training, grey"] = distances(
        index, [fingerprint.canonical(Image.fromarray(p).convert("L")) for p in train_pictures])
    report["toy"] = table(f"toy world: {len(chosen)} benchmark images copied, {len(train)} training images",
                          copies, clean, thresholds)

    names, photos = real_photos()
    real_download = Downloader(384, "keep_ratio_largest")
    real_index = build(tmp / "real_index", names, "photos", photos)
    for image in photos:
        image.format = "PNG"
    real_copies = copy_distances(real_index, photos, range(len(photos)), real_download, rng)
    real_pictures = [real_download.picture(png(image)) for image in photos]
    real_clean = distances(real_index, real_pictures, exclude=list(range(len(photos))))
    found = real_index.candidates(real_pictures, [fingerprint.is_grey(p) for p in real_pictures])
    report["real_candidates_per_image"] = round(float(np.mean([len(items) - 1 for items in found])), 2)
    print(f"real photos: {report['real_candidates_per_image']} candidates per image besides itself")
    samples = np.array([not name.startswith("lfw_") for name in names])
    for title, group, key in ((f"scikit-image sample photos ({samples.sum()})", samples, "photos"),
                              (f"LFW crops, 25 x 25 ({(~samples).sum()})", ~samples, "lfw")):
        report[key] = table(f"real: {title}; index: all {len(photos)} real images",
                            {k: v[group] for k, v in real_copies.items()}, {key: real_clean[group]}, thresholds)
    return report


def measure_cost(tmp: Path, items: int, world, download, train: list[Image.Image]) -> dict:
    """Per training image: the shard stage's decontamination work (decode, canonical picture, lookup, checks)."""
    scale = [make_record(world.seed + 7, i, world.image_size, world.grid, world.min_objects, world.max_objects,
                         world.textures).image for i in range(items)]
    start = time.perf_counter()
    index = build(tmp / "scale_index", [str(i) for i in range(items)], "scale", scale)
    build_s = time.perf_counter() - start
    downloader = Downloader(download.image_size, download.resize_mode)
    stored = [downloader(png(image))[0] for image in train[:1000]]
    start = time.perf_counter()
    for data in stored:
        fingerprint.decode(data)
    decode_s = time.perf_counter() - start
    start = time.perf_counter()
    pictures = [fingerprint.canonical(fingerprint.decode(data)) for data in stored]
    matches = index.match(pictures, 0.075)
    total_s = time.perf_counter() - start
    start = time.perf_counter()
    greys = [fingerprint.is_grey(picture) for picture in pictures]
    found = index.candidates(pictures, greys)
    lookup_s = time.perf_counter() - start
    checks = sum(len(items) for items in found)
    per_image_ms = 1e3 * total_s / len(stored)
    per_check_ms = 1e3 * (total_s - lookup_s - decode_s) / max(checks, 1)
    print(f"\ncost: {len(stored)} images against {items} benchmark images ({items * index.crops} descriptors): "
          f"{per_image_ms:.2f} ms per image ({sum(m is not None for m in matches)} matched): decode "
          f"{1e3 * decode_s / len(stored):.3f} ms, lookup {1e3 * lookup_s / len(stored):.2f} ms, "
          f"{checks / len(stored):.1f} candidates checked at {per_check_ms:.2f} ms each; "
          f"fingerprinting the benchmark: {1e3 * build_s / items:.2f} ms per image")
    return {"benchmark_images": items, "ms_per_image": round(per_image_ms, 3),
            "images_per_s": round(len(stored) / total_s, 1), "decode_images_per_s": round(len(stored) / decode_s, 1),
            "lookup_ms_per_image": round(1e3 * lookup_s / len(stored), 3),
            "candidates_per_image": round(checks / len(stored), 2), "ms_per_check": round(per_check_ms, 3),
            "benchmark_ms_per_image": round(1e3 * build_s / items, 3)}


if __name__ == "__main__":
    main()
