"""Every train.method trains on the same loop and data and is read back as what it trained; a method refuses,
before any work, shards that hold fewer captions per sample than it reads (holistic's K, or train.caption_pool)."""
import itertools

import open_clip
import pandas as pd
import pytest
import torch

from fixclip.holistic import HolisticClip
from fixclip.longclip import LongClip
from fixclip.methods import METHODS, caption_keys
from fixclip.model import FixClip
from fixclip.model_folder import load_model_folder
from fixclip.train.config import TrainConfig
from fixclip.train.data import StreamLayout, TrainStream, count_samples, shard_list
from fixclip.train.loop import check_config, train
from pipeline.shard import writer
from pipeline.params.shard import ShardParams
from tests.fixclip.train.test_data import tiny_run, write_train_shards
from tests.pipeline.shard.test_writer import make_raw

CLASSES = {"fixclip": FixClip, "longclip": LongClip, "holistic": HolisticClip}


def test_the_registry_holds_every_method_the_params_accept():
    assert set(METHODS) == set(CLASSES)
    assert all(METHODS[name].load().model is cls for name, cls in CLASSES.items())
    assert all(METHODS[name].section is type(getattr(TrainConfig(), name)) for name in METHODS)
    for name in METHODS:
        cfg = TrainConfig(method=name)
        assert cfg.method_section is getattr(cfg, name)


def write_multi_caption_shards(root, n: int = 32, per_shard: int = 8, captions: int = 3):
    """Shards whose samples hold `captions` long captions (long_0.txt ..), as the shard stage writes them."""
    raw = make_raw(root / "raw", n=n, bad_image=(), failed=())
    keys = [f"{s:05d}{i:04d}" for s in range(2) for i in range(s * n // 2, (s + 1) * n // 2)]
    rows = [{"key": k, "caption_index": j, "caption": f"Caption {j} of {k}: a red circle. More words follow here.",
             "prompt_id": j, "model": "tiny", "finish_reason": "stop", "tokens": 12, "status": "ok"}
            for k in keys for j in range(captions)]
    (root / "captions").mkdir(parents=True)
    frame = pd.DataFrame(rows).astype({"caption_index": "int32", "prompt_id": "int32", "tokens": "int32"})
    for stem, part in frame.groupby(frame["key"].str[:5]):  # one file per raw shard, as the caption stage writes
        part.to_parquet(root / "captions" / f"{stem}.parquet")
    writer.run(ShardParams(samples_per_shard=per_shard, val_fraction=0.0), raw, root / "captions", root / "out")
    return root / "out" / "train"


@pytest.fixture(scope="module")
def single_caption_dir(tmp_path_factory):
    return write_train_shards(tmp_path_factory.mktemp("single"), n=32, per_shard=8)


@pytest.fixture(scope="module")
def multi_caption_dir(tmp_path_factory):
    return write_multi_caption_shards(tmp_path_factory.mktemp("multi"))


@pytest.mark.parametrize("method", ["longclip", "holistic"])
def test_method_trains_and_reloads_as_itself(tmp_path, method, single_caption_dir, multi_caption_dir):
    data = multi_caption_dir if method == "holistic" else single_caption_dir
    metrics = train(*tiny_run(tmp_path, data, method=method, samples=32))
    parts = {"longclip": {"long", "short"}, "holistic": {"contrastive", "diversity"}}[method]
    assert metrics["steps"] == 4 and all(torch.isfinite(torch.tensor(metrics[f"final_{p}"])) for p in parts)
    model = load_model_folder(tmp_path / "model")
    assert type(model) is CLASSES[method] and model.context_length == 248
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert model.encode_image(images).shape == (2, 64)


def test_holistic_refuses_single_caption_shards_before_any_work(tmp_path, single_caption_dir):
    cfg, _ = tiny_run(tmp_path, single_caption_dir, method="holistic")
    with pytest.raises(ValueError, match=r"holistic.captions_per_image: .* has no long_0.txt, long_1.txt, long_2.txt"):
        check_config(cfg)
    assert not any(tmp_path.iterdir())


def _pool_stream(train_dir, start_chunk=0):
    tars = shard_list(train_dir)
    layout = StreamLayout(tuple(tars), tuple(count_samples(t) for t in tars), 1, 1)
    return TrainStream(layout, 0, 8, open_clip.image_transform(64, is_train=False), 77, seed=3, shuffle_buffer=0,
                       start_chunk=start_chunk, long_keys=caption_keys(3), draw_one=True)


def _drawn_caption_indices(chunk) -> list[int]:
    """Which of a sample's three captions ("Caption j of <key>: ...") each long-token row holds."""
    tokenizer = open_clip.get_tokenizer("ViT-B-32")
    drawn = []
    for row in chunk[1]:
        text = tokenizer.decode(row[row != 0].tolist())
        drawn.append(int(text.split("caption ", 1)[1][0]))
    return drawn


def test_caption_pool_draws_one_caption_per_sample_and_step_reproducibly(multi_caption_dir):
    """train.caption_pool K: one of long_0..long_{K-1} per sample, drawn per chunk from a seed, so a resumed stream
    draws what the uninterrupted one drew; over a few chunks every caption is used."""
    chunks = list(itertools.islice(iter(_pool_stream(multi_caption_dir)), 6))
    assert all(chunk[1].shape == (8, 77) for chunk in chunks)
    drawn = [_drawn_caption_indices(chunk) for chunk in chunks]
    assert set(itertools.chain(*drawn)) == {0, 1, 2}
    resumed = next(iter(_pool_stream(multi_caption_dir, start_chunk=4)))
    assert torch.equal(resumed[1], chunks[4][1]) and _drawn_caption_indices(resumed) == drawn[4]


def test_caption_pool_needs_shards_with_that_many_captions(tmp_path, single_caption_dir, multi_caption_dir):
    check_config(tiny_run(tmp_path, multi_caption_dir, caption_pool=3)[0])
    with pytest.raises(ValueError, match=r"^caption_pool: .* has no long_0.txt, long_1.txt"):
        check_config(tiny_run(tmp_path, single_caption_dir, method="longclip", caption_pool=2)[0])
    check_config(tiny_run(tmp_path, single_caption_dir, method="holistic", holistic={"captions_per_image": 1})[0])
