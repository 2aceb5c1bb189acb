"""The shard stage's library: join raw images with their captions into deterministic webdataset shards.

Every successfully downloaded image ends in `train`, `val`, or one named drop class, recorded in an index; the
counts add up. Bytes are reproducible: samples are ordered by a seeded hash of their uid, tar members carry
mtime 0, uid/gid 0 and empty owner names, and image bytes are copied as downloaded.

Three steps: `workers` processes read the raw tars (member offsets, and the image check of every image with an ok
caption, on a memory map of the tar); this process joins images, records and captions into the index and fixes
every shard's samples; then the workers write the shards, copying image bytes from the raw tars by offset. Image
bytes are never all in memory, and the bytes written do not depend on `workers` or on `distributor` (local
processes or Ray tasks, shared by both steps).

An image may have K captions (the caption stage's `captions_per_image`, read here from the caption rows). It is
kept if any is `ok`; `long.txt` is the first ok one. When K > 1 a sample also holds `long_0.txt` .. `long_{K-1}.txt`:
caption j where it is ok, else the first ok caption (counted in `substituted_captions`).
"""
import hashlib
import json
import mmap
import os
import tarfile
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import ExitStack, contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from tqdm import tqdm

from pipeline import tar_format
from pipeline.image_check import CHECKS
from pipeline.outputs import atomic_path, write_parquet
from pipeline.short_text import first_sentence
from pipeline.params.shard import ShardParams
from pipeline.ray_session import ray_session

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
DROP_REASONS = ("no_caption", "filtered_caption", "undecodable_image")


class ShardInputError(RuntimeError):
    """An input tar is corrupt or holds a member that would escape its folder."""


def safe_member_name(tar_path: Path, name: str) -> str:
    """Refuse absolute paths, parent references and sub-folders (img2dataset writes flat tars)."""
    if "/" in name or name in ("", ".", ".."):
        raise ShardInputError(f"{tar_path}: member {name!r} would escape its folder; refusing this tar")
    return name


def scan_raw_tar(tar_path: Path) -> dict[str, tar_format.Member]:
    """key -> member of the images of one raw shard; names the file if it is corrupt or unsafe."""
    images = {}
    try:
        members = tar_format.scan(tar_path)
    except (tarfile.TarError, tar_format.TarFormatError, EOFError, OSError) as exc:
        raise ShardInputError(f"{tar_path}: corrupt tar ({exc})") from exc
    for member in members:
        name = safe_member_name(tar_path, member.name)
        if not member.is_file:
            raise ShardInputError(f"{tar_path}: member {name!r} is not a regular file; refusing this tar")
        key, _, ext = name.rpartition(".")
        if ext.lower() in IMAGE_EXTENSIONS:
            images[key] = member
    return images


def unit_hash(seed: int, purpose: str, uid: str) -> float:
    """A deterministic number in [0, 1) per (seed, purpose, uid): independent of order and count."""
    digest = hashlib.sha256(f"{seed}:{purpose}:{uid}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def short_text(params: ShardParams, uid: str, long_caption: str, alt: str) -> tuple[str, str]:
    """(short text, its rule) from shard.short_text; alt text falls back to the first sentence when empty."""
    rule = params.short_text
    if rule == "both":
        rule = "alt_text" if unit_hash(params.seed, "short", uid) < params.alt_text_rate else "first_sentence"
    if rule == "alt_text" and alt.strip():
        return alt.strip(), "alt_text"
    return first_sentence(long_caption), "first_sentence"


def ground_truth(row: dict) -> str:
    """The source's own long description of an image (the toy world's ground truth), for `long_text: ground_truth`."""
    text = row.get("long_description")
    if not isinstance(text, str) or not text.strip():
        raise ShardInputError(f"shard.long_text: ground_truth needs the source's long descriptions (the toy world "
                              f"has them); image {row['key']} has none")
    return text


def with_constant(table: pa.Table, name: str, value, kind: pa.DataType) -> pa.Table:
    return table.append_column(name, pa.array([value] * table.num_rows, kind))


def concatenated(tables: list[pa.Table], columns: list[str]) -> pd.DataFrame:
    """One frame of the tables' rows (columns a table lacks are missing values; ints and floats of one column meet as
    floats), converted once: pandas' own per-file reads and concat cost twice as much. Tables without rows are left
    out (pandas writes an empty frame's text columns as numbers); with no rows at all, an empty frame of `columns`."""
    tables = [table for table in tables if table.num_rows]
    if not tables:
        return pd.DataFrame(columns=columns)
    return pa.concat_tables(tables, promote_options="permissive").to_pandas()


def load_raw_records(raw_dir: Path) -> pd.DataFrame:
    """img2dataset's per-shard records of successful downloads, with their shard file."""
    tables = []
    for parquet in sorted(raw_dir.glob("*.parquet")):
        table = pq.read_table(parquet)
        if table.num_rows:
            success = table.filter(pc.equal(table["status"], "success"))
            tables.append(with_constant(success, "raw_shard", parquet.stem, pa.string()))
    return concatenated(tables, ["key", "raw_shard"])


CAPTION_COLUMNS = ["key", "caption_index", "caption", "status", "prompt_id", "model"]


def load_captions(captions_dir: Path) -> pd.DataFrame:
    """Every captions parquet's rows (CAPTION_COLUMNS), sorted by key and caption_index. A parquet without
    `caption_index` (written before the caption stage had `captions_per_image`) holds one caption per key."""
    parquets = sorted(captions_dir.glob("*.parquet"))
    tables = []
    for number, parquet in enumerate(parquets):
        table = pq.read_table(parquet)
        if "caption_index" not in table.column_names:
            table = with_constant(table, "caption_index", 0, pa.int64())
        table = table.select([column for column in CAPTION_COLUMNS if column in table.column_names])
        tables.append(with_constant(table, "file", number, pa.int32()))
    columns = [*CAPTION_COLUMNS, "file"]
    frame = concatenated(tables, columns).reindex(columns=columns)
    frame["caption_index"] = frame["caption_index"].astype(int)
    repeated = frame.duplicated(["file", "key", "caption_index"])
    if repeated.any():
        first = frame.iloc[repeated.to_numpy().argmax()]
        key, index = first["key"], first["caption_index"]
        raise ShardInputError(f"{parquets[first['file']]}: key {key!r} has caption {index} more than once")
    return frame.drop(columns="file").sort_values(["key", "caption_index"], kind="stable")


def captions_per_image(captions: pd.DataFrame) -> int:
    """K: the highest caption_index + 1; every captioned key must have captions 0 .. K-1, once each."""
    if not len(captions):
        return 1
    per_image = 1 + int(captions["caption_index"].max())
    once = ~captions.duplicated(["key", "caption_index"]) & (captions["caption_index"] >= 0)
    complete = once.groupby(captions["key"], sort=False).sum() == per_image
    if not complete.all():
        key = complete.index[~complete.to_numpy()][0]
        found = captions.loc[captions["key"] == key, "caption_index"].tolist()
        raise ShardInputError(f"key {key!r} has captions {found}; with {per_image} per image it needs "
                              f"0 .. {per_image - 1}")
    return per_image


def is_ok(caption: dict) -> bool:
    return caption["status"] == "ok"


def long_texts(params: ShardParams, row: dict, captions: list[dict]) -> tuple[str, list[str], int]:
    """(long text, text per caption_index, how many of those are substituted). The long text is the first ok
    caption; text j is caption j if ok, else the first ok caption. `long_text: ground_truth` uses the source's
    description for all of them."""
    if params.long_text == "ground_truth":
        truth = ground_truth(row)
        return truth, [truth] * len(captions), 0
    first_ok = next(c["caption"] for c in captions if is_ok(c))
    texts = [c["caption"] if is_ok(c) else first_ok for c in captions]
    return first_ok, texts, sum(not is_ok(c) for c in captions)


def _present(value) -> bool:
    return value is not None and not (isinstance(value, float) and value != value)


def prompt_id(caption: dict) -> int | None:
    return int(caption["prompt_id"]) if _present(caption.get("prompt_id")) else None


def sample_json(row: dict, captions: list[dict], rule: str) -> dict:
    """The sample's metadata; model and prompt_id are the long text's caption's, `prompt_ids` (K > 1) all of them."""
    caption = next(c for c in captions if is_ok(c))
    meta = {
        "key": row["key"], "uid": row.get("uid", row["key"]), "url": row.get("url"),
        "alt_text": row.get("caption") or "",
        "caption_model": caption["model"] if _present(caption.get("model")) else None,
        "prompt_id": prompt_id(caption),
        "short_text_rule": rule,
        "original_size": [int(row["original_width"]), int(row["original_height"])]
        if _present(row.get("original_width")) else None,
    }
    if len(captions) > 1:
        meta["prompt_ids"] = [prompt_id(c) for c in captions]
    if isinstance(row.get("long_description"), str):
        meta["long_description"] = row["long_description"]
    if isinstance(row.get("scene"), str):
        meta["scene"] = json.loads(row["scene"])
    return meta


def rows_of(frame: pd.DataFrame) -> list[dict]:
    """The frame's rows as dicts of Python values (missing values stay None or NaN), faster than `to_dict`."""
    columns = list(frame.columns)
    return [dict(zip(columns, values)) for values in zip(*(frame[c].tolist() for c in columns))]


def drop_reason(captions: list[dict] | None) -> str | None:
    """The caption's drop class of an image, or None when its image is to be checked."""
    if not captions:
        return "no_caption"
    if not any(is_ok(c) for c in captions):
        return "filtered_caption"
    return None


JobRunner = Callable[[Callable, list[tuple], str], list]


@contextmanager
def job_runner(params: ShardParams) -> Iterator[JobRunner]:
    """`run(function, jobs, desc)` -> `function(*job)` for every job, in job order: in this process (1 worker),
    `workers` local processes, or Ray tasks (`distributor: ray`). Both steps of the stage share its processes."""
    if params.distributor == "ray":
        with ray_session(None, None, num_cpus=params.workers):
            yield ray_map
    elif params.workers == 1:
        yield lambda function, jobs, desc: [function(*job) for job in tqdm(jobs, **progress(jobs, desc))]
    else:
        with ProcessPoolExecutor(params.workers) as pool:  # processes start as jobs come, up to `workers`
            yield lambda function, jobs, desc: list(tqdm(pool.map(function, *zip(*jobs)), **progress(jobs, desc)))


def progress(jobs: list, desc: str) -> dict:
    return dict(total=len(jobs), desc=desc, unit="tar")


def ray_map(function: Callable, jobs: list[tuple], desc: str) -> list:
    """The jobs as Ray tasks (1 CPU each), results in job order; Ray retries a task whose worker died."""
    import ray

    remote = ray.remote(num_cpus=1)(function)
    pending = [remote.remote(*job) for job in jobs]
    with tqdm(**progress(jobs, desc)) as bar:
        waiting = list(pending)
        while waiting:
            done, waiting = ray.wait(waiting, num_returns=1)
            bar.update(len(done))
    return ray.get(pending)


@contextmanager
def mapped(path: Path) -> Iterator[memoryview]:
    """A file mapped into memory, as a read-only memoryview: its slices are neither copied nor read by a syscall
    each. Every slice must be gone when the block ends."""
    with open(path, "rb") as stream, mmap.mmap(stream.fileno(), 0, access=mmap.ACCESS_READ) as data, \
            memoryview(data) as view:
        yield view


INDEX_COLUMNS = ("key", "uid", "raw_shard", "substituted", "order", "fate", "long", "short", "per_caption", "meta",
                 "offset", "size")
SAMPLE_COLUMNS = ("uid", "raw_shard", "offset", "size", "long", "per_caption", "short", "meta")  # write_shard's
META_JSON = json.JSONEncoder(sort_keys=True)  # as json.dumps(..., sort_keys=True), without its per-call set-up


def plan_raw_tar(tar_path: Path, records: pd.DataFrame, captions: pd.DataFrame, params: ShardParams,
                 per_image: int) -> list[tuple]:
    """One entry (INDEX_COLUMNS) per image that `records` lists in this raw shard: its fate, and for a kept image its
    texts, metadata, where its bytes are in the raw tar (offset, size) and its seeded place in the shard order."""
    images = scan_raw_tar(tar_path)
    missing = set(records["key"]) - images.keys()
    if missing:
        raise ShardInputError(f"{tar_path}: corrupt tar ({len(missing)} images listed in {tar_path.stem}.parquet "
                              f"are missing)")
    by_key: dict[str, list[dict]] = {}
    for caption in rows_of(captions):
        by_key.setdefault(caption["key"], []).append(caption)
    check, raw_shard = CHECKS[params.check_images], tar_path.stem
    entries = []
    with ExitStack() as stack:
        data = stack.enter_context(mapped(tar_path)) if images else b""
        for row in rows_of(records):
            key, uid = row["key"], str(row.get("uid", row["key"]))
            image_captions = by_key.get(key)
            member = images[key]
            fate = drop_reason(image_captions)
            if fate is None and not check(data[member.offset:member.offset + member.size]):
                fate = "undecodable_image"
            substituted, long_caption, short, per_caption, meta = 0, None, None, [], None
            if fate is None:
                fate = "val" if unit_hash(params.seed, "split", uid) < params.val_fraction else "train"
                long_caption, per_caption, substituted = long_texts(params, row, image_captions)
                short, rule = short_text(params, uid, long_caption, row.get("caption") or "")
                per_caption = per_caption if per_image > 1 else []
                meta = META_JSON.encode(sample_json(row, image_captions, rule))
            entries.append((key, uid, raw_shard, substituted, unit_hash(params.seed, "order", uid), fate,
                            long_caption, short, per_caption, meta, member.offset, member.size))
    return entries


def plan(raw_dir: Path, captions_dir: Path, params: ShardParams, run_jobs: JobRunner) -> tuple[pd.DataFrame, dict]:
    """Decide every raw image's fate, `workers` raw tars at a time; returns the index (one row per image, in shard
    order) and what the captions hold (`captioned` images, `captions_per_image`)."""
    records = load_raw_records(raw_dir)
    captions = load_captions(captions_dir)
    per_image = captions_per_image(captions)
    tars = sorted(raw_dir.glob("*.tar"))
    without_tar = set(records["raw_shard"]) - {tar.stem for tar in tars}
    if without_tar:
        raise ShardInputError(f"{raw_dir}: {sorted(without_tar)[0]}.parquet lists images but its tar is missing")
    shared_keys = records.loc[records["key"].duplicated(), "key"]
    if len(shared_keys):
        raise ShardInputError(f"{raw_dir}: several images share the key {shared_keys.iloc[0]!r}")
    shard_of_key = records.set_index("key")["raw_shard"]
    captions_by_shard = dict(tuple(captions.groupby(captions["key"].map(shard_of_key), sort=False)))
    records_by_shard = dict(tuple(records.groupby("raw_shard", sort=False)))
    empty_records, empty_captions = records.iloc[:0], captions.iloc[:0]
    jobs = [(tar, records_by_shard.get(tar.stem, empty_records), captions_by_shard.get(tar.stem, empty_captions),
             params, per_image) for tar in tars]
    parts = run_jobs(plan_raw_tar, jobs, "shard: read raw")
    index = pd.DataFrame([entry for part in parts for entry in part], columns=INDEX_COLUMNS)
    if index["uid"].duplicated().any():
        raise ShardInputError(f"{raw_dir}: several images share a uid")
    index = index.take(shard_order(index)).drop(columns="order").reset_index(drop=True)
    return index, {"captioned": int(captions["key"].nunique()), "captions_per_image": per_image}


def shard_order(index: pd.DataFrame) -> np.ndarray:
    """Positions of the index's rows by (order, uid): by order alone, unless two uids hash alike (a 64-bit tie)."""
    order = index["order"].to_numpy()
    by_order = np.argsort(order, kind="stable")
    if (np.diff(order[by_order]) == 0).any():
        return pd.MultiIndex.from_arrays([order, index["uid"]]).argsort()
    return by_order


def sample_members(uid: str, image: bytes, long: str, per_caption: list[str], short: str,
                   meta: str) -> list[tuple[str, bytes]]:
    """(name, bytes) of one sample: jpg, long.txt, long_0.txt .. (one per caption when K > 1), short.txt, json."""
    texts = [(f"{uid}.long_{j}.txt", text.encode()) for j, text in enumerate(per_caption)]
    return [(f"{uid}.jpg", image), (f"{uid}.long.txt", long.encode()), *texts, (f"{uid}.short.txt", short.encode()),
            (f"{uid}.json", meta.encode())]


def write_shard(path: Path, raw_dir: Path, samples: list[tuple[str, str, int, int, str, list[str], str, str]]) -> None:
    """One tar of (uid, raw shard, offset, size, long, long per caption, short, json) samples, written to a temp name
    then renamed; image bytes are copied from the raw tars as downloaded."""
    # Not synced: this stage has no resume (a crash reruns it whole), and DVC hashes the shards after it ends.
    with ExitStack() as sources, atomic_path(path, durable=False) as tmp, open(tmp, "wb") as stream:
        raw_tars = {name: sources.enter_context(open(raw_dir / f"{name}.tar", "rb")).fileno()
                    for name in {sample[1] for sample in samples}}
        tar_format.write_members(stream, (member for uid, raw, offset, size, *texts in samples
                                          for member in sample_members(uid, read_at(raw_tars[raw], offset, size),
                                                                       *texts)))


def read_at(fd: int, offset: int, size: int) -> bytes:
    """`size` bytes at `offset` in one call (a mapped file's page faults cost more, measured); names a short read."""
    data = os.pread(fd, size, offset)
    if len(data) != size:
        raise ShardInputError(f"a raw tar ended at byte {offset + len(data)} while it was being read: was it changed?")
    return data


def write(index: pd.DataFrame, raw_dir: Path, out_dir: Path, params: ShardParams, run_jobs: JobRunner) -> dict:
    """Write train/ and val/ shards and the index; returns shard counts per split. Every shard's samples are fixed
    by the index before any is written, so the bytes do not depend on `workers`."""
    shard_counts, jobs = {}, []
    column = pd.Series(pd.NA, index=index.index, dtype="string")
    for split in ("train", "val"):
        folder = out_dir / split
        folder.mkdir(parents=True, exist_ok=True)
        chosen = index[index["fate"] == split]
        starts = range(0, len(chosen), params.samples_per_shard)
        for number, start in enumerate(starts):
            part = chosen.iloc[start:start + params.samples_per_shard]
            name = f"{split}-{number:06d}.tar"
            samples = list(zip(*(part[c].tolist() for c in SAMPLE_COLUMNS)))
            jobs.append((folder / name, raw_dir, samples))
            column[part.index] = f"{split}/{name}"
        shard_counts[split] = len(starts)
    run_jobs(write_shard, jobs, "shard: write")
    listing = index[["uid", "key", "raw_shard", "fate"]].assign(shard=column)
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
    return metrics


def run(params: ShardParams, raw_dir: Path, captions_dir: Path, out_dir: Path) -> dict:
    with job_runner(params) as run_jobs:
        index, captions = plan(raw_dir, captions_dir, params, run_jobs)
        shard_counts = write(index, raw_dir, out_dir, params, run_jobs)
    return count(index, captions, shard_counts)
