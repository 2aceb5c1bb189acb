"""The training input stream: every micro-step gets one chunk from each data stream, resumable at any step.

Shards are dealt to ``world_size * num_workers`` streams (stream ``g = rank + world_size * worker`` reads
``shards[g::world_size * num_workers]``). Each stream cycles its own shards forever, reshuffled per pass with a seed of (seed, g, pass), and
yields chunks of ``batch_size / num_workers`` samples; the DataLoader hands them out round-robin, so a micro-batch is
one chunk of every worker of the rank. Hence:

* the samples of a global step do not depend on how the streams are spread over ranks and workers: 2 ranks x 1
  worker read what 1 rank x 2 workers reads, and the 2-rank step's gathered batch equals the 1-rank step's batch;
* after ``k`` micro-steps every stream has produced exactly ``k`` chunks, so a resumed run skips that many samples
  per stream, whole passes by arithmetic and the rest before decoding.

A "pass" is per stream: streams of unequal size cycle independently, so an
epoch is a sample count (as with open_clip's resampled shards), not an exact pass over the data.
"""
import itertools
import random
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from pathlib import Path

import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from ..text_stretch import long_tokenizer

SAMPLE_KEYS = ("jpg", "long.txt", "short.txt")  # the shard stage's members that training reads (one long caption)
# images [c, 3, H, W], long tokens [c, L] (or [c, K, L] with K long captions per sample), short tokens [c, L]
Chunk = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def shard_list(shards: str | Path | list[str]) -> list[str]:
    """Expand a brace pattern (`train-{000000..000009}.tar`), a folder of tars (sorted), or a list into paths."""
    if isinstance(shards, list):
        return [str(s) for s in shards]
    if Path(shards).is_dir():
        found = sorted(str(p) for p in Path(shards).glob("*.tar"))
        if not found:
            raise FileNotFoundError(f"{shards}: no .tar shards in this folder")
        return found
    return wds.shardlists.expand_urls(str(shards))


def check_members(shard: str, members: tuple[str, ...], key: str) -> None:
    """Raise ValueError naming ``key`` when the first sample of ``shard`` lacks one of ``members`` (e.g. shards
    with one caption per image read by a method that needs K)."""
    with tarfile.open(shard) as archive:
        names = archive.getnames()
    if not names:
        return
    first = names[0].split(".", 1)[0]
    missing = [m for m in members if f"{first}.{m}" not in names]
    if missing:
        raise ValueError(f"{key}: {shard} has no {', '.join(missing)} (its samples hold fewer captions than this "
                         "needs; caption with caption.captions_per_image at least as large)")


def count_samples(shard: str) -> int:
    """Samples (``.jpg`` members) in one tar, from its headers only."""
    with tarfile.open(shard) as archive:
        return sum(1 for name in archive.getnames() if name.endswith(".jpg"))


@dataclass(frozen=True)
class StreamLayout:
    """How one run's shards are dealt to ranks and workers."""

    shards: tuple[str, ...]
    counts: tuple[int, ...]
    world_size: int
    num_workers: int

    @property
    def streams_per_rank(self) -> int:
        return max(1, self.num_workers)

    @property
    def num_streams(self) -> int:
        return self.world_size * self.streams_per_rank

    def check(self) -> None:
        """Every stream needs at least one non-empty shard."""
        if len(self.shards) < self.num_streams:
            raise ValueError(f"num_workers: {len(self.shards)} shards cannot feed {self.world_size} rank(s) x "
                             f"{self.streams_per_rank} worker(s); lower num_workers or write smaller shards")
        for g in range(self.num_streams):
            if self.stream_size(g) == 0:
                raise ValueError(f"shards: data stream {g} got only empty shards")

    def stream_shards(self, g: int) -> list[str]:
        return list(self.shards[g::self.num_streams])

    def stream_size(self, g: int) -> int:
        return sum(self.counts[g::self.num_streams])


def _skip(count: int):
    def skip(samples):
        return itertools.islice(samples, count, None)
    return skip


class TrainStream(IterableDataset):
    """Chunks of (images, long tokens, short tokens) for one rank; see the module docstring. The long tokens are
    [chunk, L] of one of the ``long_keys`` members per sample (drawn per sample, seeded by the stream and the chunk's
    index, so a resumed or re-spread run draws the same) with ``draw_one``, else [chunk, K, L] of all of them."""

    def __init__(self, layout: StreamLayout, rank: int, chunk_size: int, image_transform: Callable,
                 context_length: int, seed: int, shuffle_buffer: int, start_chunk: int = 0,
                 long_keys: tuple[str, ...] = ("long.txt",), draw_one: bool = True):
        super().__init__()
        self.long_keys = long_keys
        self.draw_one = draw_one
        self.layout = layout
        self.rank = rank
        self.chunk_size = chunk_size
        self.image_transform = image_transform
        self.context_length = context_length
        self.seed = seed
        self.shuffle_buffer = shuffle_buffer
        self.start_chunk = start_chunk

    def _pass(self, g: int, index: int, skip: int) -> wds.DataPipeline:
        shuffle = []
        if self.shuffle_buffer:
            rng = random.Random(f"{self.seed}/{g}/{index}")
            shuffle = [wds.shuffle(self.shuffle_buffer, initial=self.shuffle_buffer, rng=rng)]
        return wds.DataPipeline(
            wds.SimpleShardList(self.layout.stream_shards(g)),
            wds.tarfile_to_samples(),
            *shuffle,
            _skip(skip),
            wds.decode("pilrgb"),
            wds.to_tuple("jpg", *self.long_keys, "short.txt"),
        )

    def _samples(self, g: int) -> Iterator[tuple]:
        passes, skip = divmod(self.start_chunk * self.chunk_size, self.layout.stream_size(g))
        for index in itertools.count(passes):
            yield from self._pass(g, index, skip)
            skip = 0

    def __iter__(self) -> Iterator[Chunk]:
        worker = get_worker_info()
        g = self.rank + self.layout.world_size * (worker.id if worker else 0)
        tokenize = long_tokenizer(self.context_length)
        samples = self._samples(g)
        for chunk in itertools.count(self.start_chunk):
            images, *longs, shorts = zip(*itertools.islice(samples, self.chunk_size))
            if self.draw_one:
                rng = random.Random(f"{self.seed}/{g}/{chunk}/caption")
                long_tokens = tokenize([longs[rng.randrange(len(longs))][i] for i in range(len(images))])
            else:  # [K, c] captions -> [c, K, L] tokens
                long_tokens = torch.stack([tokenize(list(caption)) for caption in longs], dim=1)
            yield torch.stack([self.image_transform(im) for im in images]), long_tokens, tokenize(list(shorts))


def micro_batches(stream: TrainStream, num_workers: int, pin_memory: bool = False) -> Iterator[Chunk]:
    """Endless micro-batches: one chunk of every worker, concatenated."""
    loader = DataLoader(stream, batch_size=None, num_workers=num_workers, pin_memory=pin_memory,
                        persistent_workers=False)
    chunks = iter(loader)
    per_batch = max(1, num_workers)
    while True:
        parts = [next(chunks) for _ in range(per_batch)]
        yield tuple(torch.cat(column) for column in zip(*parts))
