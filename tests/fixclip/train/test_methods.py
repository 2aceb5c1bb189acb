"""Every train.method trains on the same loop and data and is read back as what it trained; holistic refuses,
before any work, shards that hold fewer captions per sample than it reads."""
import pandas as pd
import pytest
import torch

from fixclip.holistic import HolisticClip
from fixclip.longclip import LongClip
from fixclip.methods import METHODS
from fixclip.model import FixClip
from fixclip.model_folder import load_model_folder
from fixclip.train.config import TrainConfig
from fixclip.train.loop import check_config, train
from pipeline.shard import writer
from pipeline.params.shard import ShardParams
from tests.fixclip.train.test_data import tiny_run, write_train_shards
from tests.pipeline.shard.test_writer import make_raw

CLASSES = {"fixclip": FixClip, "longclip": LongClip, "holistic": HolisticClip}


def test_the_registry_holds_every_method_the_params_accept():
    accepted = TrainConfig.model_fields["method"].annotation.__args__
    assert set(METHODS) == set(accepted) == set(CLASSES)
    assert all(METHODS[name].model is cls for name, cls in CLASSES.items())
    assert all(METHODS[name].section is type(getattr(TrainConfig(), name)) for name in METHODS)


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
