"""fixclip's shard reader reads back exactly what the shard stage wrote, once per sample across workers."""
import io
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from fixclip.data import sample_pipeline, shard_list
from pipeline import shards
from pipeline.params import ShardParams
from tests.test_shards import make_captions, make_raw


@pytest.fixture
def written(tmp_path):
    raw = make_raw(tmp_path / "raw", n=40, bad_image=(), failed=())
    keys = [f"{s:05d}{i:04d}" for s in range(2) for i in range(s * 20, (s + 1) * 20)]
    make_captions(tmp_path / "captions", keys)
    shards.run(ShardParams(samples_per_shard=7, val_fraction=0.0), raw, tmp_path / "captions", tmp_path / "out")
    expected = {}
    for tar in sorted((tmp_path / "out/train").glob("*.tar")):
        with tarfile.open(tar) as archive:
            for member in archive.getmembers():
                uid, _, suffix = member.name.partition(".")
                expected.setdefault(uid, {})[suffix] = archive.extractfile(member).read()
    return tmp_path / "out/train", expected


def test_reads_back_exactly_what_was_written(written):
    folder, expected = written
    seen = {}
    for image, long, short, meta in sample_pipeline(folder, with_meta=True):
        seen[meta["uid"]] = (image, long, short)
    assert seen.keys() == expected.keys()
    for uid, (image, long, short) in seen.items():
        assert long == expected[uid]["long.txt"].decode() and short == expected[uid]["short.txt"].decode()
        original = np.asarray(Image.open(io.BytesIO(expected[uid]["jpg"])).convert("RGB"))
        assert image.mode == "RGB" and np.array_equal(np.asarray(image), original)


def test_brace_pattern_and_folder_agree(written):
    folder, _ = written
    tars = shard_list(folder)
    assert len(tars) == 6  # 40 samples, 7 per shard
    assert shard_list(str(folder / "train-{000000..000005}.tar")) == tars


def test_workers_split_shards_each_sample_once(written):
    folder, expected = written
    loader = torch.utils.data.DataLoader(sample_pipeline(folder, with_meta=True), batch_size=None, num_workers=2)
    uids = [meta["uid"] for _, _, _, meta in loader]
    assert sorted(uids) == sorted(expected)


def test_shuffle_is_seeded(written):
    folder, _ = written
    order = [short for _, _, short in sample_pipeline(folder, shuffle_buffer=16, seed=1)]
    again = [short for _, _, short in sample_pipeline(folder, shuffle_buffer=16, seed=1)]
    plain = [short for _, _, short in sample_pipeline(folder)]
    assert order == again and sorted(order) == sorted(plain) and order != plain


def test_resampled_draws_forever(written):
    folder, expected = written
    stream = iter(sample_pipeline(folder, resampled=True))
    drawn = [next(stream)[2] for _ in range(3 * len(expected))]
    assert len(drawn) == 3 * len(expected)
