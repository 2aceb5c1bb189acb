"""img2dataset's output, one raw shard at a time: `<stem>.parquet` (its records) and `<stem>.tar` (its images), read
as the shard stage and the decontamination check both need it: the records of successful downloads, where each
image's bytes lie in the tar, and the tar mapped into memory."""
import mmap
import os
import tarfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline import tar_format

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")


class ShardInputError(RuntimeError):
    """An input is corrupt, missing, or breaks the stage contract; the message names the file."""


def read_records(parquet: Path) -> tuple[pd.DataFrame, set[str]]:
    """(img2dataset's records of successful downloads, every key the parquet lists); empty if there is no file."""
    if not parquet.exists():
        return pd.DataFrame(columns=["key", "status"]), set()
    table = pq.ParquetFile(parquet).read(use_threads=False)
    keys = set(table["key"].to_pylist()) if table.num_rows else set()
    if table.num_rows:
        table = table.filter(pc.equal(table["status"], "success"))
    return table.to_pandas(use_threads=False), keys


def scan_raw_tar(tar_path: Path) -> dict[str, tuple[int, int]]:
    """key -> (offset, size) of the images of one raw shard; names the file if it is corrupt, or holds anything but
    regular files in one folder (img2dataset writes flat tars: no absolute paths, parent references, sub-folders)."""
    try:
        members = tar_format.scan(tar_path)
    except (tarfile.TarError, tar_format.TarFormatError, EOFError, OSError) as exc:
        raise ShardInputError(f"{tar_path}: corrupt tar ({exc})") from exc
    for name in [m.name for m in members if "/" in m.name or m.name in ("", ".", "..")][:1]:
        raise ShardInputError(f"{tar_path}: member {name!r} would escape its folder; refusing this tar")
    for name in [m.name for m in members if not m.is_file][:1]:
        raise ShardInputError(f"{tar_path}: member {name!r} is not a regular file; refusing this tar")
    named = [(m.name.rpartition("."), m) for m in members]
    return {key: (m.offset, m.size) for (key, _, ext), m in named if ext.lower() in IMAGE_EXTENSIONS}


def values(frame: pd.DataFrame, name: str) -> list:
    """A column's values as Python objects; None for each row where the frame has no such column."""
    return frame[name].tolist() if name in frame else [None] * len(frame)


@contextmanager
def mapped(path: Path) -> Iterator[mmap.mmap | bytes]:
    """A file mapped into memory, read-only: its slices are bytes, read without a syscall each (a memoryview of it
    slices without copying; every such slice must be gone when the block ends). An empty file, which cannot be
    mapped, is empty bytes."""
    with open(path, "rb") as stream:
        if not os.fstat(stream.fileno()).st_size:
            yield b""
            return
        with mmap.mmap(stream.fileno(), 0, access=mmap.ACCESS_READ) as data:
            yield data
