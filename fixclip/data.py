"""Reading the shard stage's webdataset shards as (image, long text, short text) for training and evaluation.

Shards are named by a brace pattern (`data/shards/train/train-{000000..000009}.tar`), a folder (all its `*.tar`),
or a list. Without resampling, shards are split across nodes (RANK/WORLD_SIZE or torch.distributed) and then across
DataLoader workers, so each sample is read once per epoch. With resampling, every worker draws shards with
replacement forever (open_clip's choice for long runs: no epoch boundary, no uneven shard counts across ranks).
"""
import random
from collections.abc import Callable
from pathlib import Path

import webdataset as wds

SAMPLE_KEYS = ("jpg", "long.txt", "short.txt")


def shard_list(shards: str | Path | list[str]) -> list[str]:
    """Expand a brace pattern, a folder of tars, or a list into shard paths (sorted for folders)."""
    if isinstance(shards, list):
        return [str(s) for s in shards]
    if Path(shards).is_dir():
        found = sorted(str(p) for p in Path(shards).glob("*.tar"))
        if not found:
            raise FileNotFoundError(f"{shards}: no .tar shards in this folder")
        return found
    return wds.shardlists.expand_urls(str(shards))


def _identity(value):
    return value


def sample_pipeline(
    shards: str | Path | list[str],
    image_transform: Callable | None = None,
    *,
    resampled: bool = False,
    shuffle_buffer: int = 0,
    seed: int = 0,
    with_meta: bool = False,
) -> wds.DataPipeline:
    """An IterableDataset of (RGB image or its transform, long text, short text[, json metadata])."""
    urls = shard_list(shards)
    if resampled:
        source = [wds.ResampledShards(urls, deterministic=True)]
    else:
        source = [wds.SimpleShardList(urls), wds.split_by_node, wds.split_by_worker]
    shuffle = [wds.shuffle(shuffle_buffer, initial=shuffle_buffer, rng=random.Random(seed))] if shuffle_buffer else []
    keys = SAMPLE_KEYS + (("json",) if with_meta else ())
    return wds.DataPipeline(
        *source,
        wds.tarfile_to_samples(),
        *shuffle,
        wds.decode("pilrgb"),
        wds.to_tuple(*keys),
        wds.map_tuple(image_transform or _identity, *(_identity for _ in keys[1:])),
    )
