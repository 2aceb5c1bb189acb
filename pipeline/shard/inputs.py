"""The shard stage's caption inputs, one raw shard at a time: the caption stage's rows (`captions/<stem>.parquet`, as
docs/pipeline.md's stage contracts name them) for the images of img2dataset's records (`raw/<stem>.parquet`, read by
pipeline/raw_shards.py).

Each worker reads its own raw shard's files, so the stage never holds every caption in one process. Only K, the
captions per image, is read across all caption files first, from their parquet statistics. A worker reads on one
thread (why: docs/scale.md, "shard").
"""
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.raw_shards import ShardInputError

CAPTION_COLUMNS = ["key", "caption_index", "caption", "status", "prompt_id", "model"]


def captions_per_image(caption_files: list[Path]) -> int:
    """K: the highest caption_index in any caption file + 1, from the files' column statistics where they have them.
    A file without `caption_index` (written before the caption stage had `captions_per_image`) holds one per key."""
    highest = 0
    for path in caption_files:
        metadata = pq.ParquetFile(path).metadata
        names = [metadata.schema.column(i).name for i in range(metadata.num_columns)]
        if "caption_index" not in names or not metadata.num_rows:
            continue
        column = names.index("caption_index")
        stats = [metadata.row_group(g).column(column).statistics for g in range(metadata.num_row_groups)]
        if all(s is not None and s.has_min_max for s in stats):
            highest = max(highest, *(int(s.max) for s in stats))
        else:
            highest = max(highest, int(pc.max(pq.ParquetFile(path).read(columns=["caption_index"])[0]).as_py()))
    return 1 + highest


def read_captions(path: Path, per_image: int, listed: set[str]) -> pd.DataFrame:
    """The rows (CAPTION_COLUMNS) of one raw shard's caption file, sorted by key and caption_index; every key must be
    one the raw shard's parquet lists, with captions 0 .. K-1, once each. Empty if there is no file."""
    if not path.exists():
        return pd.DataFrame(columns=CAPTION_COLUMNS)
    source = pq.ParquetFile(path)
    table = source.read(columns=[c for c in CAPTION_COLUMNS if c in source.schema_arrow.names], use_threads=False)
    frame = table.to_pandas(use_threads=False).reindex(columns=CAPTION_COLUMNS) if table.num_rows else pd.DataFrame(
        columns=CAPTION_COLUMNS)
    frame["caption_index"] = frame["caption_index"].fillna(0).astype(np.int64)
    foreign = sorted(set(frame["key"].tolist()) - listed)
    if foreign:
        raise ShardInputError(f"{path}: key {foreign[0]!r} is not in raw/{path.stem}.parquet (captions are per raw "
                              f"shard)")
    if not in_blocks(frame, per_image):
        frame = frame.sort_values(["key", "caption_index"], kind="stable")
        refuse_repeated_or_incomplete(path, frame, per_image)
    return frame


def in_blocks(frame: pd.DataFrame, per_image: int) -> bool:
    """The rows are already what the stage needs, as the caption stage writes them: sorted by key, each key's
    captions 0 .. K-1 in order. A cheap check on the arrays; any other frame is sorted and checked in full."""
    keys, index = frame["key"].to_numpy(), frame["caption_index"].to_numpy()
    if len(keys) % per_image:
        return False
    blocks = keys.reshape(-1, per_image)
    return bool((index.reshape(-1, per_image) == np.arange(per_image)).all() and (blocks == blocks[:, :1]).all()
                and (blocks[1:, 0] > blocks[:-1, 0]).all())


def refuse_repeated_or_incomplete(path: Path, frame: pd.DataFrame, per_image: int) -> None:
    """Name the first key with a repeated caption_index, or without exactly 0 .. K-1 (the frame is sorted)."""
    repeated = frame.duplicated(["key", "caption_index"])
    if repeated.any():
        first = frame.loc[repeated].iloc[0]
        raise ShardInputError(f"{path}: key {first['key']!r} has caption {first['caption_index']} more than once")
    per_key = frame.groupby("key", sort=False)["caption_index"]
    complete = (per_key.size() == per_image) & (per_key.min() == 0)  # with no repeats: exactly 0 .. K-1
    if not complete.all():
        key = complete.index[~complete.to_numpy()][0]
        found = frame.loc[frame["key"] == key, "caption_index"].tolist()
        raise ShardInputError(f"{path}: key {key!r} has captions {found}; with {per_image} per image it needs "
                              f"0 .. {per_image - 1}")
