"""Fingerprint the images of the configured benchmarks (the benchmarks stage)."""
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from pipeline.benchmarks import DEV, dev_entries, load_benchmark
from pipeline.decontaminate import fingerprint, index


class BenchmarkImageError(ValueError):
    """A benchmark is missing or one of its images cannot be read; the message names the file (a user error: the
    stage prints it as one line)."""


def labelled_entries(entries, toy_dir: Path, dev_toy_dir: Path | None = None) -> list[tuple[str, object, Path]]:
    """(name, entry, toy folder) of every benchmark the images of which are fingerprinted: each entry, and with
    ``dev_toy_dir`` each toy entry again on the development split, named `dev/<name>`."""
    labelled = [(entry.name, entry, toy_dir) for entry in entries]
    if dev_toy_dir is not None:
        labelled += [(f"{DEV}/{entry.name}", entry, dev_toy_dir) for entry in dev_entries(entries)]
    return labelled


def benchmark_items(labelled: list[tuple[str, object, Path]]) -> pd.DataFrame:
    """One row per distinct image of the (name, entry, toy folder) triples: `item` (its path), `benchmark` (the
    names of the entries that list it, comma-separated, in params order)."""
    names: dict[str, list[str]] = {}
    for name, entry, toy_dir in labelled:
        try:
            images = load_benchmark(entry, toy_dir).images
        except (FileNotFoundError, ValueError) as exc:
            raise BenchmarkImageError(f"evaluate.benchmarks: {name}: {exc}") from None
        for path in images:
            listed = names.setdefault(str(path), [])
            if name not in listed:
                listed.append(name)
    return pd.DataFrame({"benchmark": [",".join(n) for n in names.values()], "item": list(names)})


def read_picture(path: str) -> np.ndarray:
    """The canonical picture of a benchmark image file; BenchmarkImageError naming the file if it does not decode."""
    try:
        return fingerprint.canonical(fingerprint.decode(Path(path).read_bytes()))
    except (OSError, fingerprint.UnreadableImage) as exc:
        raise BenchmarkImageError(f"{path}: benchmark image cannot be read ({exc})") from None


def fingerprint_benchmarks(entries, toy_dir: Path, out_dir: Path, dev_toy_dir: Path | None = None) -> dict:
    """Write the fingerprints of every image of `entries` (and of the toy development split in ``dev_toy_dir``) to
    `out_dir`; returns the counts (the stage's metrics)."""
    labelled = labelled_entries(entries, toy_dir, dev_toy_dir)
    items = benchmark_items(labelled)
    pictures = []
    with tqdm(total=len(items), desc="benchmarks: fingerprint", unit="img") as bar:  # closed before an error prints
        for path in items["item"]:
            pictures.append(read_picture(path))
            bar.update()
    shape = (0, fingerprint.CANONICAL, fingerprint.CANONICAL, 3)
    index.write(out_dir, items, np.stack(pictures) if pictures else np.zeros(shape, np.uint8))
    per_benchmark = {name: 0 for name, _, _ in labelled}
    for names in items["benchmark"]:
        for name in names.split(","):
            per_benchmark[name] += 1
    return {"images": len(items), "images_per_benchmark": per_benchmark}
