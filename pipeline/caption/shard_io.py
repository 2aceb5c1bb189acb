"""A raw shard's images in, its caption file out, and the run record: what the local run (`run.py`) and the Ray
distributor (`ray_distributor.py`) both use."""
import asyncio
import json
import tarfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.caption.client import CaptionResult, ImageItem
from core.outputs import write_bytes, write_json

RUNS_FILE = "_runs.json"
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
