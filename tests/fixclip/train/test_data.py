"""The train stream: samples per step independent of the rank x worker layout, exact skip on resume.

Also holds the helpers the other train tests import (tiny shard sets, a tiny run description)."""
import itertools
from pathlib import Path

import open_clip
import pytest
import torch

from fixclip.train.config import RunDirs, TrainConfig
from fixclip.train.data import StreamLayout, TrainStream, count_samples, micro_batches, shard_list
from pipeline.shard import writer
from pipeline.params.shard import ShardParams
from tests.conftest import REPO
from tests.pipeline.shard.test_writer import make_captions, make_raw


def write_train_shards(root: Path, n: int = 64, per_shard: int = 16) -> Path:
    """n samples in shards of per_shard, written by the shard stage's library; returns the train folder."""
    raw = make_raw(root / "raw", n=n, bad_image=(), failed=())
    keys = [f"{s:05d}{i:04d}" for s in range(2) for i in range(s * n // 2, (s + 1) * n // 2)]
    make_captions(root / "captions", keys)
    writer.run(ShardParams(samples_per_shard=per_shard, val_fraction=0.0), raw, root / "captions", root / "out")
    return root / "out" / "train"


def tiny_run(root: Path, train_dir: Path, **changes) -> tuple[TrainConfig, RunDirs]:
    """A few-step CPU run on the committed tiny base CLIP, writing under root: (config, dirs) for ``train``."""
    values = {"shards": str(train_dir), "base_model": {"config": str(REPO / "assets/base_clip/model.json"),
                                                       "weights": str(REPO / "assets/base_clip/weights.pt")},
              "batch_size": 8, "epochs": None, "samples": 96, "num_workers": 2, "threads": 1, "checkpoint_every": 3,
              "warmup_steps": 2, "shuffle_buffer": 8, "device": "cpu"}
    values.update(changes)
    dirs = RunDirs(out_dir=root / "model", checkpoint_dir=root / "checkpoints", log_dir=root / "curves", progress=False)
    return TrainConfig.model_validate(values), dirs


def train_command(cfg: TrainConfig, dirs: RunDirs) -> list[str]:
    """`python -m fixclip.train` arguments for this run (its RUN.json is written next to the model folder)."""
    run_json = Path(dirs.out_dir).parent / "run.json"
    run_json.parent.mkdir(parents=True, exist_ok=True)
    run_json.write_text(cfg.model_dump_json())
    return ["-m", "fixclip.train", str(run_json), "--out", str(dirs.out_dir), "--checkpoints",
            str(dirs.checkpoint_dir), "--curves", str(dirs.log_dir), "--no-progress"]


@pytest.fixture(scope="module")
def train_dir(tmp_path_factory):
    return write_train_shards(tmp_path_factory.mktemp("shards"))


def _layout(train_dir, world_size, num_workers):
    tars = shard_list(train_dir)
    return StreamLayout(tuple(tars), tuple(count_samples(t) for t in tars), world_size, num_workers)


def _stream(layout, rank, chunk, start_chunk=0):
    transform = open_clip.image_transform(64, is_train=False)
    return TrainStream(layout, rank, chunk, transform, 77, seed=3, shuffle_buffer=8, start_chunk=start_chunk)


def _take(batches, k):
    return [b for b in itertools.islice(batches, k)]


def test_counts_samples_from_headers(train_dir):
    assert [count_samples(t) for t in shard_list(train_dir)] == [16, 16, 16, 16]


def test_two_ranks_read_what_one_rank_with_two_workers_reads(train_dir):
    """Step batches of 2 ranks x 1 worker (gathered in rank order) equal 1 rank x 2 workers, across passes."""
    single = _take(micro_batches(_stream(_layout(train_dir, 1, 2), 0, 4), num_workers=2), 9)
    per_rank = [_take(micro_batches(_stream(_layout(train_dir, 2, 1), r, 4), num_workers=1), 9) for r in (0, 1)]
    for step, batch in enumerate(single):
        for column in range(3):
            gathered = torch.cat([per_rank[0][step][column], per_rank[1][step][column]])
            assert torch.equal(batch[column], gathered), (step, column)


def test_resumed_stream_continues_exactly(train_dir):
    layout = _layout(train_dir, 1, 2)
    whole = _take(micro_batches(_stream(layout, 0, 3), num_workers=2), 14)  # streams of 32 samples: > 1 pass
    resumed = _take(micro_batches(_stream(layout, 0, 3, start_chunk=9), num_workers=2), 5)
    for expected, got in zip(whole[9:], resumed):
        assert all(torch.equal(a, b) for a, b in zip(expected, got))


def test_too_few_shards_is_an_error_naming_num_workers(train_dir):
    with pytest.raises(ValueError, match="^num_workers: 4 shards cannot feed 2 rank"):
        _layout(train_dir, 2, 3).check()
