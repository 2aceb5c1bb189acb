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
import time
from pathlib import Path

import pyarrow.parquet as pq

from pipeline.caption.client import CaptionResult, caption_stream
from pipeline.caption.context import check_context
from pipeline.caption.filters import STATUSES
from pipeline.caption.fleet import VllmFleet
from pipeline.caption.quality import caption_quality
from pipeline.caption.shard_io import (RUNS_FILE, RunRecord, expected_rows, finished_rows, image_keys, read_images,
                                       write_shard)
from core.outputs import write_json
from pipeline.params.caption import CaptionParams
from core.ray_session import require_ray

FINGERPRINT_FILE = "_fingerprint.json"
FULL_HASH_MAX_BYTES = 64 << 20


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


async def caption_shards(
    params: CaptionParams, endpoints: list, todo: dict[str, Path], keys: dict[str, list[str]], out_dir: Path,
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


def run(params: CaptionParams, raw_dir: Path, out_dir: Path, metrics_path: Path, log_dir: Path,
        image_size: int | None = None) -> dict:
    """Caption every image shard in raw_dir not yet captioned in out_dir; write and return the metrics.

    `image_size`: the side of the square images the download stage writes; before any server starts, a request for
    such an image must fit `server.max_model_len` (`context.check_context`; None skips the check)."""
    if params.distributor == "ray":  # first: without ray installed this fails before any work
        require_ray("caption.distributor")
        from pipeline.caption.ray_distributor import caption_on_ray
    raw_dir, out_dir, metrics_path = Path(raw_dir), Path(out_dir), Path(metrics_path)
    tars = {p.stem: p for p in sorted(raw_dir.glob("*.tar"))}
    keys = {shard: image_keys(path, params.image_extensions) for shard, path in tars.items()}
    per_image = params.captions_per_image
    if any(keys.values()):
        print(check_context(params, image_size), flush=True)  # before any caption of another fingerprint is removed
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
    metrics = {"model": params.model, "served_model_name": params.served_model_name, "images": images,
               "captions_per_image": per_image} | counts | {
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
