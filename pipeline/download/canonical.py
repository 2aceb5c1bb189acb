"""Same URLs, same bytes: a finished img2dataset shard rewritten in one canonical form.

img2dataset writes a shard's samples in the order its download threads finish (tar members and parquet rows), stamps
every tar member with the wall-clock time, and records start, end and duration in `<shard>_stats.json`. `settle`
rewrites a finished shard with its members and rows in key order, the tar members with fixed metadata
(pipeline/shard/tar_format.py), and the stats without the timings. The stats file is rewritten last, so a shard
whose stats still hold a timing was interrupted in between and is settled again (`settle_all`, run by the stage
before and after img2dataset). Settling a settled shard changes nothing.
"""
import json
import mmap
from contextlib import nullcontext
from pathlib import Path

import pyarrow.parquet as pq

from pipeline.outputs import atomic_path, write_bytes
from pipeline.shard.tar_format import scan, write_tar

TIMINGS = ("duration", "start_time", "end_time")
BATCH = 256  # tar members handed to the OS per gathered write


def settle(out_dir: Path, name: str) -> None:
    """Rewrite shard `name` (e.g. `00003`) of out_dir canonically, if img2dataset's timings are still in it."""
    stats_path = out_dir / f"{name}_stats.json"
    stats = json.loads(stats_path.read_text())
    if not any(key in stats for key in TIMINGS):
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
    settled = {key: value for key, value in stats.items() if key not in TIMINGS}
    write_bytes(stats_path, (json.dumps(settled, indent=4, sort_keys=True) + "\n").encode())


def settle_all(out_dir: Path) -> None:
    """Settle every finished shard of out_dir, and remove the temporary files of a settling that was killed."""
    for leftover in out_dir.glob(".*.tmp"):
        leftover.unlink()
    for stats in sorted(out_dir.glob("*_stats.json")):
        settle(out_dir, stats.name.removesuffix("_stats.json"))

