"""The caption stage: img2dataset shards in `raw_dir` -> one captions parquet per shard in `out_dir` + metrics.

Each image gets `captions_per_image` (K) captions, one row per (key, caption_index), rows sorted by both.
Resumable: a shard's parquet appears only complete (temp file + fsync + rename), and finished shards whose
(key, caption_index) rows still match their tar and K are skipped on rerun. `out_dir/_fingerprint.json` records
the params that shape caption text (K among them) and the model's identity; when it changes, every caption is
redone. Every caption row's status is `ok`, a rejection class, or `failed`, so the metrics' counts add up to
`captions` = `images` x K.

With `distributor: ray` the shards to do are captioned by Ray workers instead of this process's fleet
(`pipeline/caption/ray_distributor.py`); everything else here is the same.

Speed survives a resume: `out_dir/_runs.json` records, for every run of the current fingerprint that captioned
anything, its seconds, images and tokens (updated as each shard is written, so a killed run counts too). The
metrics' rates are over those runs; a rerun that only skips finished shards keeps them.
"""
import asyncio
import hashlib
import json
import tarfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.caption.client import CaptionResult, ImageItem, caption_stream
from pipeline.caption.filters import STATUSES
from pipeline.caption.fleet import VllmFleet
from pipeline.caption.quality import caption_quality
from pipeline.outputs import write_bytes, write_json
from pipeline.params.caption import CaptionParams

FINGERPRINT_FILE = "_fingerprint.json"
RUNS_FILE = "_runs.json"
FULL_HASH_MAX_BYTES = 64 << 20
SCHEMA = pa.schema([
    ("key", pa.string()),
    ("caption_index", pa.int32()),
    ("caption", pa.string()),
    ("prompt_id", pa.int32()),
    ("model", pa.string()),
    ("finish_reason", pa.string()),
    ("tokens", pa.int32()),
    ("status", pa.string()),
])


def split_member(name: str, extensions: list[str]) -> tuple[str, str] | None:
    """`KEY.jpg` -> (KEY, jpg) for image members; None for the rest (txt, json, folders)."""
    stem, dot, ext = name.rpartition(".")
    if not dot or "/" in name or ext.lower() not in extensions:
        return None
    return stem, ext


def image_keys(tar_path: Path, extensions: list[str]) -> list[str]:
    """The image keys of a shard, read from tar headers only; duplicate keys are an error."""
    with tarfile.open(tar_path) as tar:
        keys = [parts[0] for m in tar if m.isfile() and (parts := split_member(m.name, extensions))]
    if len(set(keys)) != len(keys):
        raise ValueError(f"{tar_path}: several images share a key; cannot caption each key once")
    return sorted(keys)


async def read_images(tar_paths: dict[str, Path], extensions: list[str]) -> AsyncIterator[ImageItem]:
    for shard, tar_path in tar_paths.items():
        with tarfile.open(tar_path) as tar:
            for member in tar:
                parts = split_member(member.name, extensions) if member.isfile() else None
                if parts:
                    yield ImageItem(shard, parts[0], tar.extractfile(member).read(), parts[1])
                    await asyncio.sleep(0)


def model_identity(model: str) -> dict:
    """A local model dir's files (content hash, or size for very large files); an HF id as itself."""
    path = Path(model)
    if not path.exists():
        return {"id": model}
    files = {}
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        size = file.stat().st_size
        digest = hashlib.sha256(file.read_bytes()).hexdigest() if size <= FULL_HASH_MAX_BYTES else f"size:{size}"
        files[str(file.relative_to(path))] = digest
    return {"files": files}


def fingerprint(params: CaptionParams) -> dict:
    return {"params": params.content_fingerprint(), "model": model_identity(params.model)}


def shard_parquet(rows: list[CaptionResult], model: str) -> bytes:
    """A shard's caption rows as parquet bytes, sorted by (key, caption_index)."""
    rows = sorted(rows, key=lambda r: (r.key, r.caption_index))
    table = pa.Table.from_pydict({
        "key": [r.key for r in rows],
        "caption_index": [r.caption_index for r in rows],
        "caption": [r.caption for r in rows],
        "prompt_id": [r.prompt_id for r in rows],
        "model": [model] * len(rows),
        "finish_reason": [r.finish_reason for r in rows],
        "tokens": [r.tokens for r in rows],
        "status": [r.status for r in rows],
    }, schema=SCHEMA)
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return sink.getvalue().to_pybytes()


def write_shard(out_dir: Path, shard: str, rows: list[CaptionResult], model: str) -> None:
    write_bytes(out_dir / f"{shard}.parquet", shard_parquet(rows, model))


def expected_rows(keys: list[str], captions_per_image: int) -> list[tuple[str, int]]:
    """The (key, caption_index) rows a finished shard holds, in file order."""
    return [(key, index) for key in keys for index in range(captions_per_image)]


def finished_rows(parquet_path: Path) -> list[tuple[str, int]] | None:
    """The (key, caption_index) rows of a written shard; None when it is absent or of another layout."""
    if not parquet_path.exists() or not pq.read_schema(parquet_path).equals(SCHEMA):
        return None
    table = pq.read_table(parquet_path, columns=["key", "caption_index"])
    return list(zip(table.column("key").to_pylist(), table.column("caption_index").to_pylist()))


def prepare_out_dir(out_dir: Path, stamp: dict, shards: set[str]) -> None:
    """Remove temp files, captions of shards no longer in raw, and everything if the fingerprint changed."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp_path = out_dir / FINGERPRINT_FILE
    same = stamp_path.exists() and json.loads(stamp_path.read_text()) == stamp
    for path in out_dir.iterdir():
        stale_shard = path.suffix == ".parquet" and (not same or path.stem not in shards)
        if path.name.endswith(".tmp") or stale_shard:
            path.unlink()
    if not same:
        (out_dir / RUNS_FILE).unlink(missing_ok=True)
        write_json(stamp_path, stamp)


def past_runs(out_dir: Path) -> list[dict]:
    """{seconds, images, tokens} of the earlier runs of this fingerprint that captioned anything."""
    path = out_dir / RUNS_FILE
    return json.loads(path.read_text())["runs"] if path.exists() else []


class RunRecord:
    """This run's entry in `_runs.json`, rewritten (atomically) whenever its work grows."""

    def __init__(self, out_dir: Path):
        self.path, self.earlier = out_dir / RUNS_FILE, past_runs(out_dir)
        self.started = time.monotonic()
        self.images = self.tokens = 0
        self.mine: dict | None = None  # set once this run has written a shard

    def add(self, images: int, tokens: int) -> None:
        self.images, self.tokens = self.images + images, self.tokens + tokens
        self.save()

    def save(self, tokens: int | None = None) -> None:
        """Write this run's entry; `tokens` replaces the per-shard sum with the run's exact count at its end."""
        if tokens is not None:
            self.tokens = tokens
        self.mine = {"seconds": round(time.monotonic() - self.started, 3), "images": self.images,
                     "tokens": self.tokens}
        write_json(self.path, {"runs": self.earlier + [self.mine]})

    def totals(self) -> dict:
        runs = self.earlier + ([self.mine] if self.mine else [])
        return {key: sum(run[key] for run in runs) for key in ("seconds", "images", "tokens")} | {"runs": len(runs)}


async def caption_shards(
    params: CaptionParams, endpoints: list[str], todo: dict[str, Path], keys: dict[str, list[str]], out_dir: Path,
    record: RunRecord,
) -> dict:
    pending: dict[str, list[CaptionResult]] = {shard: [] for shard in todo}

    async def on_result(result: CaptionResult) -> None:
        rows = pending[result.shard]
        rows.append(result)
        if len(rows) == len(keys[result.shard]) * params.captions_per_image:
            await asyncio.to_thread(write_shard, out_dir, result.shard, pending.pop(result.shard), params.model)
            record.add(len(keys[result.shard]), sum(r.tokens for r in rows))

    total = sum(len(keys[shard]) for shard in todo)
    return await caption_stream(params, endpoints, read_images(todo, params.image_extensions), total, on_result)


def count_statuses(out_dir: Path, shards: list[str]) -> dict:
    """Caption rows per status, their total (`captions`) and their tokens."""
    counts = dict.fromkeys(STATUSES, 0)
    tokens = 0
    for shard in shards:
        table = pq.read_table(out_dir / f"{shard}.parquet", columns=["status", "tokens"])
        for status in table.column("status").to_pylist():
            counts[status] += 1
        tokens += sum(table.column("tokens").to_pylist())
    return {"captions": sum(counts.values()), **counts, "caption_tokens": tokens}


def run(params: CaptionParams, raw_dir: Path, out_dir: Path, metrics_path: Path, log_dir: Path) -> dict:
    """Caption every image shard in raw_dir not yet captioned in out_dir; write and return the metrics."""
    if params.distributor == "ray":  # first: without ray installed this fails before any work
        from pipeline.caption.ray_distributor import caption_on_ray
    raw_dir, out_dir, metrics_path = Path(raw_dir), Path(out_dir), Path(metrics_path)
    tars = {p.stem: p for p in sorted(raw_dir.glob("*.tar"))}
    keys = {shard: image_keys(path, params.image_extensions) for shard, path in tars.items()}
    per_image = params.captions_per_image
    prepare_out_dir(out_dir, fingerprint(params), set(tars))
    todo = {s: p for s, p in tars.items()
            if finished_rows(out_dir / f"{s}.parquet") != expected_rows(keys[s], per_image)}
    for shard in todo:
        (out_dir / f"{shard}.parquet").unlink(missing_ok=True)
        if not keys[shard]:
            write_shard(out_dir, shard, [], params.model)
    todo = {s: p for s, p in todo.items() if keys[s]}

    started = time.monotonic()
    stats = {"tokens": 0, "transient_retries": 0}
    record = RunRecord(out_dir)
    if todo:
        if params.distributor == "ray":
            stats = caption_on_ray(params, todo, keys, out_dir, log_dir, record)
        else:
            with VllmFleet(params, log_dir) as endpoints:
                stats = asyncio.run(caption_shards(params, endpoints, todo, keys, out_dir, record))
        record.save(tokens=stats["tokens"])  # with server start and stop, and the tokens of retried requests
    seconds = time.monotonic() - started
    captioned = sum(len(keys[s]) for s in todo)
    work = record.totals()

    counts = count_statuses(out_dir, list(tars))
    images = sum(len(k) for k in keys.values())
    if counts["captions"] != images * per_image:
        raise RuntimeError(f"{out_dir}: {counts['captions']} caption rows for {images} raw images x "
                           f"{per_image} captions_per_image")
    metrics = {"images": images, "captions_per_image": per_image} | counts | {
        "shards": len(tars),
        "shards_skipped": len(tars) - len(todo),
        "captioned_this_run": captioned,
        "generated_tokens_this_run": stats["tokens"],
        "seconds_this_run": round(seconds, 3),
        "transient_retries": stats["transient_retries"],
        # Over every run of this fingerprint that captioned anything (a resumed run adds to them):
        "working_runs": work["runs"],
        "seconds": round(work["seconds"], 3),
        "images_per_s": round(work["images"] / work["seconds"], 3) if work["seconds"] else 0.0,
        "captions_per_s": round(work["images"] * per_image / work["seconds"], 3) if work["seconds"] else 0.0,
        "tokens_per_s": round(work["tokens"] / work["seconds"], 3) if work["seconds"] else 0.0,
    }
    if "ray" in stats:
        metrics["ray"] = stats["ray"]
    quality = caption_quality(raw_dir, out_dir, list(tars))
    if quality is not None:
        metrics["quality"] = quality
    write_json(metrics_path, metrics)
    return metrics
