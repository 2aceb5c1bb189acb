"""The shard stage's library: join raw images with their captions into deterministic webdataset shards.

Every successfully downloaded image ends in `train`, `val`, or one named drop class, recorded in an index; the
counts add up. With `shard.decontaminate`, an image that is a near copy of a benchmark image (the benchmarks stage's
fingerprints, pipeline/decontaminate) is dropped as `benchmark_duplicate`; the index names the benchmark image and
the distance. Bytes are reproducible: samples are ordered by a seeded hash of their uid, tar members carry
mtime 0, uid/gid 0 and empty owner names, and image bytes are copied as downloaded.

Three steps: `workers` processes plan one raw shard each (its records, its caption file, member offsets and the
image check of every image with an ok caption, on a memory map of the tar: see inputs.py), a column at a time;
this process joins their index rows, orders them and fixes every shard's samples; then the workers write the shards,
copying image bytes from the raw tars by offset. Image bytes are never all in memory, nor are the raw records and
captions, and the bytes written do not depend on `workers` or on `distributor` (core/jobs.py's job runner: local
processes or Ray tasks, shared by both steps).

An image may have K captions (the caption stage's `captions_per_image`, read here from the caption rows). It is
kept if any is `ok`; `long.txt` is the first ok one. When K > 1 a sample also holds `long_0.txt` .. `long_{K-1}.txt`:
caption j where it is ok, else the first ok caption (counted in `substituted_captions`).
"""
import hashlib
import json
import os
import shutil
from collections import Counter
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import pandas as pd

from core.jobs import Jobs, job_runner
from core.outputs import atomic_path, write_parquet
from pipeline.decontaminate.downloaded import Decontamination
from pipeline import tar_format
from pipeline.shard import file_limit, text_records
from pipeline.shard.image_check import CHECKS
from pipeline.shard.json_objects import ABSENT, json_objects
from pipeline.raw_shards import ShardInputError, mapped, read_records, scan_raw_tar, values
from pipeline.shard.inputs import captions_per_image, read_captions
from pipeline.shard.short_text import first_sentence
from pipeline.params.shard import ShardParams

DROP_REASONS = ("no_caption", "filtered_caption", "undecodable_image", "benchmark_duplicate")


def unit_hashes(seed: int, purpose: str, uids: list[str]) -> np.ndarray:
    """A deterministic number in [0, 1) per (seed, purpose, uid): independent of order and count. The first 8 bytes
    of a SHA-256, as a big-endian integer over 2**64 (a float64 rounds it as Python's int division does)."""
    prefix = f"{seed}:{purpose}:"
    digests = b"".join([hashlib.sha256((prefix + uid).encode()).digest()[:8] for uid in uids])
    return np.frombuffer(digests, ">u8") / 2**64


def short_texts(params: ShardParams, uids: list[str], longs: list[str], alts: list) -> tuple[list[str], list[str]]:
    """(short text, its rule) per sample, from shard.short_text; an empty alt text falls back to the first
    sentence."""
    if params.short_text == "both":
        use_alt = (unit_hashes(params.seed, "short", uids) < params.alt_text_rate).tolist()
    else:
        use_alt = [params.short_text == "alt_text"] * len(uids)
    shorts, rules = [], []
    for wanted, long_caption, alt in zip(use_alt, longs, alts):
        alt = alt.strip() if wanted else ""
        shorts.append(alt or first_sentence(long_caption))
        rules.append("alt_text" if alt else "first_sentence")
    return shorts, rules


def _present(value) -> bool:
    return value is not None and not (isinstance(value, float) and value != value)


class ImageCaptions:
    """The captions of some images as (images, K) arrays, one row per image in key order (read_captions gives them
    sorted by key and caption_index, every key with exactly 0 .. K-1)."""

    def __init__(self, captions: pd.DataFrame, per_image: int):
        def blocks(values: list) -> np.ndarray:
            array = np.empty(len(values), object)
            array[:] = values
            return array.reshape(-1, per_image)

        self.keys = pd.Index(captions["key"].to_numpy()[::per_image])
        self.ok = (captions["status"] == "ok").to_numpy().reshape(-1, per_image)
        self.texts = blocks(values(captions, "caption"))
        self.models = blocks([model if _present(model) else None for model in values(captions, "model")])
        self.prompt_ids = blocks([int(p) if _present(p) else None for p in values(captions, "prompt_id")])

    def rows_of(self, keys: list[str]) -> np.ndarray:
        """Each key's row, -1 where it has no caption."""
        return self.keys.get_indexer(keys)

    def first_ok(self, rows: np.ndarray) -> np.ndarray:
        """The column of each row's first ok caption (rows that have one)."""
        return self.ok[rows].argmax(axis=1)


def fates(images: list[tuple[int, int]], rows: np.ndarray, found: ImageCaptions, data: memoryview,
          check: Callable) -> np.ndarray:
    """Each image's drop class (no caption, none ok, image check failed), or None for images to keep so far."""
    fate = np.full(len(rows), None, object)
    captioned = rows >= 0
    has_ok = np.zeros(len(rows), bool)
    has_ok[captioned] = found.ok[rows[captioned]].any(axis=1)
    fate[~captioned] = "no_caption"
    fate[captioned & ~has_ok] = "filtered_caption"
    for i in np.flatnonzero(has_ok).tolist():
        offset, size = images[i]
        if not check(data[offset:offset + size]):
            fate[i] = "undecodable_image"
    return fate


SOURCE_TEXTS = {"ground_truth": ("long_description", "long descriptions (the toy world has them)"),
                "alt_text": ("caption", "alt texts")}  # shard.long_text values read from the source: (column, what)


def long_texts(params: ShardParams, rows: np.ndarray, found: ImageCaptions, records: pd.DataFrame, keys: list[str],
               per_image: int) -> tuple[list[str], list[list[str]], np.ndarray]:
    """Per kept image: (long text, text per caption_index, how many of those are substituted). The long text is the
    first ok caption; text j is caption j if ok, else the first ok caption. `long_text: ground_truth` uses the
    source's description (the toy world's) for all of them, `long_text: alt_text` the source's alt text."""
    if params.long_text in SOURCE_TEXTS:
        column, what = SOURCE_TEXTS[params.long_text]
        texts = values(records, column)
        for key, text in zip(keys, texts):
            if not isinstance(text, str) or not text.strip():
                raise ShardInputError(f"shard.long_text: {params.long_text} needs the source's {what}; image {key} "
                                      f"has none")
        return texts, [[text] * per_image for text in texts], np.zeros(len(keys), np.int64)
    ok, texts = found.ok[rows], found.texts[rows]
    first = texts[np.arange(len(rows)), found.first_ok(rows)]
    per_caption = np.where(ok, texts, first[:, None]).tolist()
    return first.tolist(), per_caption, per_image - ok.sum(axis=1)


def sample_jsons(records: pd.DataFrame, keys: list[str], rows: np.ndarray, found: ImageCaptions, rules: list[str],
                 per_image: int) -> list[str]:
    """Each kept sample's metadata as JSON: model and prompt_id are the long text's caption's, `prompt_ids` (K > 1)
    all of them."""
    first = found.first_ok(rows)
    widths, heights = values(records, "original_width"), values(records, "original_height")
    columns = {
        "key": keys, "uid": records["uid"].tolist() if "uid" in records else keys, "url": values(records, "url"),
        "alt_text": [alt or "" for alt in values(records, "caption")],
        "caption_model": found.models[rows, first].tolist(),
        "prompt_id": found.prompt_ids[rows, first].tolist(),
        "short_text_rule": rules,
        "original_size": [f"[{int(w)}, {int(h)}]" if _present(w) else "null" for w, h in zip(widths, heights)],
        "long_description": [d if isinstance(d, str) else ABSENT for d in values(records, "long_description")],
        "scene": [json.loads(s) if isinstance(s, str) else ABSENT for s in values(records, "scene")],
    }
    if per_image > 1:
        columns["prompt_ids"] = found.prompt_ids[rows].tolist()
    return json_objects(columns, encoded=("original_size",))


INDEX_COLUMNS = ("key", "uid", "raw_shard", "substituted", "order", "fate", "offset", "size", "text_offset",
                 "text_size", "benchmark", "benchmark_item", "benchmark_distance")
MATCH_COLUMNS = ("benchmark", "benchmark_item", "benchmark_distance")  # of a benchmark_duplicate, else null
SAMPLE_COLUMNS = ("uid", "raw_shard", "offset", "size", "text_offset", "text_size")  # write_shard's


def plan_raw_shard(raw_dir: Path, stem: str, captions_dir: Path, texts_dir: Path, params: ShardParams,
                   per_image: int, decontamination: Decontamination | None) -> tuple[pd.DataFrame, int]:
    """(one row (INDEX_COLUMNS) per successful download of raw shard `stem`, the keys its caption file holds). A row
    holds the image's fate, its seeded place in the shard order, where its bytes are in the raw tar (offset, size),
    and for a kept image where its texts and metadata are in `texts_dir/<stem>.texts` (see text_records.py). Worked
    out a column at a time; only the image check runs per image."""
    records, listed = read_records(raw_dir / f"{stem}.parquet")
    captions = read_captions(captions_dir / f"{stem}.parquet", per_image, listed)
    tar_path = raw_dir / f"{stem}.tar"
    if tar_path.exists():
        index = plan_raw_tar(tar_path, records, captions, params, per_image, texts_dir / f"{stem}.texts",
                             decontamination)
    elif len(records):
        raise ShardInputError(f"{raw_dir}: {stem}.parquet lists images but its tar is missing")
    else:
        index = pd.DataFrame(columns=INDEX_COLUMNS)
    return index, int(captions["key"].nunique())


def plan_raw_tar(tar_path: Path, records: pd.DataFrame, captions: pd.DataFrame, params: ShardParams,
                 per_image: int, texts_path: Path, decontamination: Decontamination | None = None) -> pd.DataFrame:
    """The index rows of one raw tar's `records`, given their `captions` (see plan_raw_shard)."""
    members = scan_raw_tar(tar_path)
    keys = records["key"].tolist()
    missing = set(keys) - members.keys()
    if missing:
        raise ShardInputError(f"{tar_path}: corrupt tar ({len(missing)} images listed in {tar_path.stem}.parquet "
                              f"are missing)")
    images = [members[key] for key in keys]
    uids = [str(uid) for uid in records["uid"].tolist()] if "uid" in records else keys
    found = ImageCaptions(captions, per_image)
    rows = found.rows_of(keys)
    matches = {name: np.full(len(keys), None, object) for name in MATCH_COLUMNS}
    with mapped(tar_path) as data, memoryview(data) as view:
        fate = fates(images, rows, found, view, CHECKS[params.check_images])
        if decontamination is not None:
            drop_copies(fate, matches, images, records, view, decontamination)
    kept = np.flatnonzero([drop is None for drop in fate.tolist()])
    split, substituted, texts = kept_samples(params, records.iloc[kept], [keys[i] for i in kept],
                                             [uids[i] for i in kept], rows[kept], found, per_image)
    packed, text_offsets, text_sizes = text_records.pack(texts)
    texts_path.write_bytes(packed)
    fate[kept] = split
    columns = {"fate": fate}
    for name, kept_values in (("substituted", substituted), ("text_offset", text_offsets), ("text_size", text_sizes)):
        columns[name] = np.zeros(len(keys), np.int64)
        columns[name][kept] = kept_values
    return pd.DataFrame({"key": np.array(keys, object), "uid": np.array(uids, object),
                         "raw_shard": np.full(len(keys), tar_path.stem, object),
                         "order": unit_hashes(params.seed, "order", uids), **columns,
                         "offset": np.array([offset for offset, _ in images], np.int64),
                         "size": np.array([size for _, size in images], np.int64), **matches},
                        columns=INDEX_COLUMNS)


def drop_copies(fate: np.ndarray, matches: dict[str, np.ndarray], images: list[tuple[int, int]],
                records: pd.DataFrame, data: memoryview, decontamination: Decontamination) -> None:
    """Mark every image that copies a benchmark image `benchmark_duplicate`, filling in `matches`: a leak is named
    as such even where the image had no usable caption (a caption drop class is then replaced). An image kept so far
    that passed a header check but does not decode is `undecodable_image`."""
    candidates = np.flatnonzero([drop in (None, "no_caption", "filtered_caption") for drop in fate.tolist()]).tolist()
    widths, heights = values(records, "original_width"), values(records, "original_height")
    originals = [(int(widths[i]), int(heights[i])) if _present(widths[i]) and _present(heights[i]) else None
                 for i in candidates]
    found = decontamination.check([data[images[i][0]:images[i][0] + images[i][1]] for i in candidates], originals)
    for i, match in zip(candidates, found):
        if match == "undecodable":
            if fate[i] is None:
                fate[i] = "undecodable_image"
        elif match is not None:
            fate[i] = "benchmark_duplicate"
            matches["benchmark"][i], matches["benchmark_item"][i] = match.benchmark, match.item
            matches["benchmark_distance"][i] = match.distance


def kept_samples(params: ShardParams, records: pd.DataFrame, keys: list[str], uids: list[str], rows: np.ndarray,
                 found: ImageCaptions, per_image: int) -> tuple[list[str], np.ndarray, list[list[str]]]:
    """Per kept image: its split (seeded by uid), its substituted captions, and its texts in member order (long, long
    per caption when K > 1, short, json)."""
    split = np.where(unit_hashes(params.seed, "split", uids) < params.val_fraction, "val", "train").tolist()
    longs, per_caption, substituted = long_texts(params, rows, found, records, keys, per_image)
    alts = [alt or "" for alt in values(records, "caption")]
    shorts, rules = short_texts(params, uids, longs, alts)
    metas = sample_jsons(records, keys, rows, found, rules, per_image)
    if per_image == 1:
        texts = [[long, short, meta] for long, short, meta in zip(longs, shorts, metas)]
    else:
        texts = [[long, *each, short, meta] for long, each, short, meta in zip(longs, per_caption, shorts, metas)]
    return split, substituted, texts


def plan(raw_dir: Path, captions_dir: Path, texts_dir: Path, params: ShardParams, run_jobs: Jobs,
         decontamination: Decontamination | None = None) -> tuple[pd.DataFrame, dict]:
    """Decide every raw image's fate, `workers` raw shards at a time, their texts going to `texts_dir`; returns the
    index (one row per image, in shard order) and what the captions hold (`captioned` images,
    `captions_per_image`)."""
    stems = sorted({path.stem for path in raw_dir.glob("*.tar")} | {path.stem for path in raw_dir.glob("*.parquet")})
    caption_files = sorted(captions_dir.glob("*.parquet"))
    for orphan in [path for path in caption_files if path.stem not in stems][:1]:
        raise ShardInputError(f"{orphan}: captions of no raw shard ({raw_dir} has no {orphan.stem}.parquet)")
    sources = min(len(stems), params.samples_per_shard)  # the raw shards one shard's samples can come from
    try:  # before the workers start, so they inherit it
        file_limit.room_for(2 * sources)
    except file_limit.FileLimitError as exc:
        raise ShardInputError(f"shard.samples_per_shard: writing a shard opens 2 files per raw shard its samples come "
                              f"from, here up to {sources}; {exc}. Lower shard.samples_per_shard or raise the hard "
                              f"limit") from exc
    per_image = captions_per_image(caption_files)
    jobs = [(raw_dir, stem, captions_dir, texts_dir, params, per_image, decontamination) for stem in stems]
    parts = run_jobs.map(plan_raw_shard, jobs, "shard: read raw", unit="tar")
    planned = [part for part, _ in parts if len(part)]
    index = pd.concat(planned, ignore_index=True) if planned else pd.DataFrame(columns=INDEX_COLUMNS)
    shared_keys = index.loc[index["key"].duplicated(), "key"]
    if len(shared_keys):
        raise ShardInputError(f"{raw_dir}: several images share the key {shared_keys.iloc[0]!r}")
    if index["uid"].duplicated().any():
        raise ShardInputError(f"{raw_dir}: several images share a uid")
    order = shard_order(index)
    del index["order"]
    index = index.take(order)
    index.index = pd.RangeIndex(len(index))  # in place: reset_index would copy every column once more
    return index, {"captioned": sum(captioned for _, captioned in parts), "captions_per_image": per_image}


def shard_order(index: pd.DataFrame) -> np.ndarray:
    """Positions of the index's rows by (order, uid): by order alone, unless two uids hash alike (a 64-bit tie)."""
    order = index["order"].to_numpy()
    by_order = np.argsort(order, kind="stable")
    if (np.diff(order[by_order]) == 0).any():
        return pd.MultiIndex.from_arrays([order, index["uid"]]).argsort()
    return by_order


SAMPLES_PER_WRITE = 128  # samples whose members are read and handed to the OS together


def sample_members(samples: list[tuple], sources: dict[str, tuple[int, int]],
                   texts_per_sample: int) -> tuple[list[str], list[bytes]]:
    """(names, data) of the samples' members: jpg (its bytes read from the raw tar as downloaded), long.txt,
    long_0.txt .. (one per caption when K > 1), short.txt, json (read from the raw shard's text records)."""
    names, datas = [], []
    extra = [f"long_{j}.txt" for j in range(texts_per_sample - 3)]
    for uid, raw, offset, size, text_offset, text_size in samples:
        tar, texts = sources[raw]
        if extra:
            names += [f"{uid}.jpg", f"{uid}.long.txt", *[f"{uid}.{suffix}" for suffix in extra], f"{uid}.short.txt",
                      f"{uid}.json"]
        else:
            names += (f"{uid}.jpg", f"{uid}.long.txt", f"{uid}.short.txt", f"{uid}.json")
        datas.append(read_at(tar, offset, size))
        datas += text_records.unpack(read_at(texts, text_offset, text_size), texts_per_sample)
    return names, datas


def write_shard(path: Path, raw_dir: Path, texts_dir: Path, columns: dict[str, np.ndarray],
                texts_per_sample: int) -> None:
    """One tar of the samples whose SAMPLE_COLUMNS (uid, raw shard, image offset, image size, text offset, text
    size) are `columns`, written to a temp name then renamed; image bytes are copied from the raw tars as
    downloaded."""
    samples = list(zip(*(columns[name].tolist() for name in SAMPLE_COLUMNS)))
    raws = set(columns["raw_shard"].tolist())
    file_limit.room_for(2 * len(raws))  # a worker elsewhere (Ray) did not inherit the stage's limit
    # Not synced: this stage has no resume (a crash reruns it whole), and DVC hashes the shards after it ends.
    with ExitStack() as files, atomic_path(path, durable=False) as tmp, open(tmp, "wb") as stream:
        sources = {name: (read_only(files, f"{raw_dir}/{name}.tar"), read_only(files, f"{texts_dir}/{name}.texts"))
                   for name in raws}
        tar_format.write_tar(stream, (sample_members(samples[start:start + SAMPLES_PER_WRITE], sources,
                                                     texts_per_sample)
                                      for start in range(0, len(samples), SAMPLES_PER_WRITE)))


def read_only(files: ExitStack, path: str) -> int:
    """A file descriptor of `path`, closed with `files`. At scale a shard's samples come from about as many raw
    shards as it has samples (the order is a seeded shuffle), so each source is one open, the cheapest (docs/scale.md,
    "shard")."""
    fd = os.open(path, os.O_RDONLY)
    files.callback(os.close, fd)
    return fd


def read_at(fd: int, offset: int, size: int) -> bytes:
    """`size` bytes at `offset` in one call (docs/scale.md, "shard"); names a short read."""
    data = os.pread(fd, size, offset)
    if len(data) != size:
        raise ShardInputError(f"an input ended at byte {offset + len(data)} while it was being read: was it changed?")
    return data


def write(index: pd.DataFrame, raw_dir: Path, texts_dir: Path, out_dir: Path, params: ShardParams, per_image: int,
          run_jobs: Jobs) -> dict:
    """Write train/ and val/ shards and the index; returns shard counts per split. Every shard's samples are fixed
    by the index before any is written, so the bytes do not depend on `workers`."""
    texts_per_sample = 3 + (per_image if per_image > 1 else 0)  # long, long_0 .. long_{K-1} when K > 1, short, json
    fate, size = index["fate"].to_numpy(), params.samples_per_shard
    shard = np.full(len(index), None, object)
    shard_counts, jobs = {}, []
    for split in ("train", "val"):
        folder = out_dir / split
        folder.mkdir(parents=True, exist_ok=True)
        chosen = np.flatnonzero(fate == split)
        columns = {name: index[name].to_numpy()[chosen] for name in SAMPLE_COLUMNS}
        names = [f"{split}-{number:06d}.tar" for number in range(-(-len(chosen) // size))]
        jobs += [(folder / name, raw_dir, texts_dir, {n: c[start:start + size] for n, c in columns.items()},
                  texts_per_sample) for name, start in zip(names, range(0, len(chosen), size))]
        shard[chosen] = np.array([f"{split}/{name}" for name in names], object)[np.arange(len(chosen)) // size]
        shard_counts[split] = len(names)
    run_jobs.map(write_shard, jobs, "shard: write", unit="tar")
    listing = index[["uid", "key", "raw_shard", "fate"]].assign(shard=pd.array(shard, dtype="string"))
    for name in MATCH_COLUMNS:
        listing[name] = pd.array(index[name], dtype="Float64" if name == "benchmark_distance" else "string")
    write_parquet(out_dir / "index.parquet", listing)
    return shard_counts


def count(index: pd.DataFrame, captions: dict, shard_counts: dict) -> dict:
    """The stage's accounting; raises if it does not add up."""
    fates = index["fate"].value_counts().to_dict() if len(index) else {}
    metrics = {
        "raw_images": len(index),
        **captions,
        "substituted_captions": int(index["substituted"].sum()),
        **{f"dropped_{reason}": int(fates.get(reason, 0)) for reason in DROP_REASONS},
        "train": int(fates.get("train", 0)),
        "val": int(fates.get("val", 0)),
        "train_shards": shard_counts["train"],
        "val_shards": shard_counts["val"],
    }
    placed = metrics["train"] + metrics["val"] + sum(metrics[f"dropped_{r}"] for r in DROP_REASONS)
    if placed != metrics["raw_images"]:
        raise RuntimeError(f"shard accounting does not add up: {placed} placed of {metrics['raw_images']}")
    duplicates = index.loc[index["fate"] == "benchmark_duplicate", "benchmark"] if len(index) else []
    per_benchmark = Counter(name for names in duplicates for name in names.split(","))
    metrics["benchmark_duplicates"] = dict(sorted(per_benchmark.items()))  # an image in several counts in each
    return metrics


def run(params: ShardParams, raw_dir: Path, captions_dir: Path, out_dir: Path,
        decontamination: Decontamination | None = None) -> dict:
    """The stage: plan, write, count. `decontamination` (None: off) checks every image still kept against the
    benchmark fingerprints."""
    texts_dir = out_dir / ".texts"  # scratch: the planned texts of every raw shard, gone when the stage ends
    with job_runner("shard.distributor", params.distributor, params.workers) as run_jobs:  # first: Ray missing
        texts_dir.mkdir(parents=True, exist_ok=True)
        try:
            index, captions = plan(raw_dir, captions_dir, texts_dir, params, run_jobs, decontamination)
            shard_counts = write(index, raw_dir, texts_dir, out_dir, params, captions["captions_per_image"], run_jobs)
        finally:
            shutil.rmtree(texts_dir, ignore_errors=True)
    metrics = count(index, captions, shard_counts)
    if params.distributor == "ray":
        metrics["ray"] = {"tasks_per_node": dict(sorted(run_jobs.tasks_per_node.items()))}
    return metrics
