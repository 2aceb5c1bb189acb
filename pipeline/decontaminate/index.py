"""The benchmark images' fingerprints on disk, and the lookup that finds which benchmark image a picture copies.

A fingerprint folder (written by the `benchmarks` stage, read by the shard workers and `python -m
pipeline.decontaminate`) holds
- items.parquet: one row per benchmark image: `benchmark` (the evaluate entry's name), `item` (its image path),
- pictures.npy: (items, CANONICAL, CANONICAL, 3) uint8, the canonical pictures the check compares,
- colour.npy, grey.npy: (items x crops, dims) float32 lookup descriptors (fingerprint.lookup_descriptors), in colour
  and in luminance; row r belongs to item r // crops.

Lookup uses faiss (IndexIVFFlat, L2): the descriptors are clustered once (k-means on a seeded sample of
`TRAIN_PER_LIST` per list) into about sqrt(n) lists and a query scans the `PROBES` nearest lists, not every benchmark
image; below `FLAT_BELOW` descriptors an exact flat index is as fast.
Candidates are the items with a descriptor within `LOOKUP_RMS` of the query among its `NEIGHBOURS` nearest; each is
then checked (fingerprint.aligned_distance) and the closest one within the threshold is the match.
"""
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np
import pandas as pd

from pipeline.decontaminate import fingerprint
from core.outputs import write_parquet

ITEMS, PICTURES, COLOUR, GREY = "items.parquet", "pictures.npy", "colour.npy", "grey.npy"
NEIGHBOURS = 64  # nearest descriptors a lookup returns
LOOKUP_RMS = 12.0  # candidates: a descriptor within this RMS difference (0-255 scale) of the query's
PROBES = 16  # inverted lists a lookup scans
FLAT_BELOW = 20_000  # descriptors under which the index is exact (flat)
TRAIN_PER_LIST = 64  # k-means sample per list (faiss's max_points_per_centroid)
CROPS = len(fingerprint.crop_boxes())  # lookup descriptors per benchmark image
SEED = 1234  # k-means seed of the inverted lists (faiss's default), single-threaded: the same lists every build


class FingerprintError(ValueError):
    """The fingerprint folder is missing or does not hold what the benchmarks stage writes (a user error: the
    stages and the checker print it as one line)."""


@dataclass(frozen=True)
class Match:
    benchmark: str
    item: str
    distance: float


def write(folder: Path, items: pd.DataFrame, pictures: np.ndarray) -> None:
    """Write the fingerprints of `items` (columns benchmark, item) whose canonical pictures are `pictures`."""
    folder.mkdir(parents=True, exist_ok=True)
    write_parquet(folder / ITEMS, items[["benchmark", "item"]].reset_index(drop=True))
    np.save(folder / PICTURES, pictures)
    for name, grey in ((COLOUR, False), (GREY, True)):
        rows = [fingerprint.lookup_descriptors(picture, grey) for picture in pictures]
        dims = fingerprint.COARSE ** 2 * (1 if grey else 3)
        np.save(folder / name, np.concatenate(rows) if rows else np.zeros((0, dims), np.float32))


def _searcher(descriptors: np.ndarray) -> faiss.Index:
    count, dims = descriptors.shape
    if count < FLAT_BELOW:
        index = faiss.IndexFlatL2(dims)
    else:
        lists = int(np.sqrt(count))
        index = faiss.IndexIVFFlat(faiss.IndexFlatL2(dims), dims, lists)
        index.cp.seed = SEED
        index.cp.max_points_per_centroid = TRAIN_PER_LIST
        threads = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(1)
        try:
            index.train(descriptors)
        finally:
            faiss.omp_set_num_threads(threads)
        index.nprobe = PROBES
    index.add(descriptors)
    return index


def read(folder: Path) -> tuple[pd.DataFrame, np.ndarray, dict[str, np.ndarray]]:
    """(items, pictures, descriptors by file name) of a fingerprint folder, memory-mapped; FingerprintError naming
    the folder if they are missing or disagree. Touches no faiss (and so no OpenMP): a process that only checks the
    folder can still fork workers that search it."""
    try:
        items = pd.read_parquet(folder / ITEMS)
        pictures = np.load(folder / PICTURES, mmap_mode="r")
        descriptors = {name: np.load(folder / name, mmap_mode="r") for name in (COLOUR, GREY)}
    except (OSError, ValueError) as exc:
        raise FingerprintError(f"{folder}: no benchmark fingerprints here ({exc}); run `dvc repro benchmarks`") \
            from None
    if any(len(d) != len(items) * CROPS for d in descriptors.values()) or len(pictures) != len(items):
        raise FingerprintError(f"{folder}: its files disagree on the number of benchmark images")
    return items, pictures, descriptors


class BenchmarkIndex:
    """The fingerprints of a folder, ready to look pictures up."""

    def __init__(self, folder: Path):
        self.items, self.pictures, descriptors = read(folder)
        self.crops = CROPS
        self.benchmarks = self.items["benchmark"].tolist()
        self.names = self.items["item"].tolist()
        self.searchers = {grey: _searcher(np.ascontiguousarray(descriptors[GREY if grey else COLOUR]))
                          for grey in (False, True)}

    def __len__(self) -> int:
        return len(self.items)

    def candidates(self, pictures: list[np.ndarray], greys: list[bool]) -> list[list[int]]:
        """Per picture, the benchmark items whose lookup descriptors are near (nearest first)."""
        found: list[list[int]] = [[] for _ in pictures]
        if not len(self):
            return found
        for grey in (False, True):
            rows = [i for i, g in enumerate(greys) if g == grey]
            if not rows:
                continue
            queries = np.stack([fingerprint.coarse(pictures[i], grey) for i in rows])
            distances, neighbours = self.searchers[grey].search(queries, min(NEIGHBOURS, len(self) * self.crops))
            limit = LOOKUP_RMS ** 2 * queries.shape[1]  # faiss returns squared L2
            for row, near, far in zip(rows, neighbours, distances):
                items = dict.fromkeys(int(n) // self.crops for n, d in zip(near, far) if 0 <= n and d <= limit)
                found[row] = list(items)
        return found

    def distance(self, query: np.ndarray, item: int, grey: bool) -> float:
        """fingerprint.aligned_distance of a query's check picture to benchmark image `item`."""
        return fingerprint.aligned_distance(query, fingerprint.check_picture(np.asarray(self.pictures[item]), grey))

    def match(self, pictures: list[np.ndarray], threshold: float) -> list[Match | None]:
        """Per canonical picture, its closest benchmark image within `threshold` (fingerprint.aligned_distance),
        or None."""
        greys = [fingerprint.is_grey(picture) for picture in pictures]
        matches: list[Match | None] = []
        for picture, grey, items in zip(pictures, greys, self.candidates(pictures, greys)):
            query = fingerprint.check_picture(picture, grey)
            best = None
            if query.std() > 1e-3:  # a flat picture has no structure to compare
                for item in items:
                    distance = self.distance(query, item, grey)
                    if distance <= threshold and (best is None or distance < best[0]):
                        best = (distance, item)
            matches.append(None if best is None else Match(self.benchmarks[best[1]], self.names[best[1]],
                                                           round(best[0], 4)))
        return matches


_LOADED: dict[str, BenchmarkIndex] = {}


def loaded(folder: Path) -> BenchmarkIndex:
    """The index of `folder`, loaded once per process (a shard worker checks many raw shards against it). faiss then
    searches on one thread: the shard stage runs one worker per core."""
    key = str(Path(folder).resolve())
    if key not in _LOADED:
        faiss.omp_set_num_threads(1)
        _LOADED[key] = BenchmarkIndex(Path(folder))
    return _LOADED[key]
