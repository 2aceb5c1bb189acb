"""Same URLs, same bytes: a finished img2dataset shard rewritten in one canonical form.

img2dataset writes a shard's samples in the order its download threads finish (tar members and parquet rows) and
stamps every tar member with the wall-clock time. `settle` rewrites a finished shard with its members and rows in key
order and the tar members with fixed metadata (pipeline/tar_format.py), then marks its `<shard>_stats.json`
`canonical`. The stats keep img2dataset's timings (its progress log reads them), so `.dvcignore` keeps them out of
the folder's hash. A shard whose stats lack the mark was interrupted before it was settled and is settled again
(`settle_all`, run by the stage before img2dataset). Settling a settled shard changes nothing.
"""
import json
import mmap
from contextlib import nullcontext
from pathlib import Path

import pyarrow.parquet as pq

from core.outputs import atomic_path, write_bytes
from pipeline.tar_format import scan, write_tar

MARK = "canonical"
BATCH = 256  # tar members handed to the OS per gathered write


def settle(out_dir: Path, name: str) -> None:
    """Rewrite shard `name` (e.g. `00003`) of out_dir canonically, unless its stats say it is."""
    stats_path = out_dir / f"{name}_stats.json"
    stats = json.loads(stats_path.read_text())
    if stats.get(MARK):
        return
    tar = out_dir / f"{name}.tar"
    members = sorted((m for m in scan(tar) if m.is_file), key=lambda m: m.name)
    with open(tar, "rb") as source, atomic_path(tar) as tmp, open(tmp, "wb") as stream:
        with mmap.mmap(source.fileno(), 0, access=mmap.ACCESS_READ) if members else nullcontext(b"") as data:
            write_tar(stream, ([[m.name for m in batch], [data[m.offset:m.offset + m.size] for m in batch]]
                               for batch in (members[i:i + BATCH] for i in range(0, len(members), BATCH))))
    parquet = out_dir / f"{name}.parquet"
    table = pq.read_table(parquet)
    with atomic_path(parquet) as tmp:
        pq.write_table(table.sort_by("key"), tmp)
    write_bytes(stats_path, json.dumps({**stats, MARK: True}, indent=4).encode())


def settle_all(out_dir: Path) -> None:
    """Settle every finished shard of out_dir, and remove the temporary files of a settling that was killed."""
    for leftover in out_dir.glob(".*.tmp"):
        leftover.unlink()
    for stats in sorted(out_dir.glob("*_stats.json")):
        settle(out_dir, stats.name.removesuffix("_stats.json"))

