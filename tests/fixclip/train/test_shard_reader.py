"""The shard stage's tars are plain webdataset: read back exactly as written, and named by folder or brace pattern."""
import io
import tarfile

import numpy as np
import pytest
import webdataset as wds
from PIL import Image

from fixclip.train.data import SAMPLE_KEYS, shard_list
from pipeline.shard import writer
from pipeline.params.shard import ShardParams
from tests.pipeline.shard.test_writer import make_captions, make_raw


@pytest.fixture
def written(tmp_path):
    raw = make_raw(tmp_path / "raw", n=40, bad_image=(), failed=())
    keys = [f"{s:05d}{i:04d}" for s in range(2) for i in range(s * 20, (s + 1) * 20)]
    make_captions(tmp_path / "captions", keys)
    writer.run(ShardParams(samples_per_shard=7, val_fraction=0.0), raw, tmp_path / "captions", tmp_path / "out")
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
    reader = wds.WebDataset(shard_list(folder), shardshuffle=False).decode("pilrgb").to_tuple(*SAMPLE_KEYS, "json")
    for image, long, short, meta in reader:
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
