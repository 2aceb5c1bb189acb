"""Without Ray installed, every stage's `distributor: ray` fails before any work, naming its key (one check,
`core.ray_session.require_ray`, which the job runner and the train stage call)."""
import importlib.util

import pytest

from core.cli import UserError
from core.ray_session import require_ray
from pipeline.params.shard import ShardParams
from pipeline.shard import writer


@pytest.fixture
def without_ray(monkeypatch):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ray" else find_spec(name, *a))


@pytest.mark.expensive  # imports every stage's library (img2dataset, torch)
def test_each_stage_names_its_key_before_any_work(without_ray, tmp_path):
    from pipeline.caption import run as caption_run
    from pipeline.download import run as download_run
    from pipeline.params.caption import CaptionParams
    from pipeline.params.download import DownloadParams
    from pipeline.params.train import TrainParams
    from fixclip.train.config import RunDirs
    from stages.train import train_on_ray

    stages = {
        "download": lambda: download_run.run(DownloadParams(distributor="ray"), tmp_path / "urls.parquet",
                                             tmp_path / "raw"),
        "caption": lambda: caption_run.run(CaptionParams(distributor="ray"), tmp_path / "raw", tmp_path / "out",
                                           tmp_path / "metrics.json", tmp_path / "logs"),
        "shard": lambda: writer.run(ShardParams(distributor="ray"), tmp_path / "raw", tmp_path / "captions",
                                    tmp_path / "shards"),
        "train": lambda: train_on_ray(TrainParams(distributor="ray"), RunDirs(tmp_path / "m", tmp_path / "c")),
    }
    for stage, start in stages.items():
        with pytest.raises(UserError, match=rf"^{stage}.distributor: ray is not installed \(pip install -e "
                                              r"'\.\[ray\]'\)$"):
            start()
    assert not list(tmp_path.iterdir())


def test_installed_ray_passes():
    require_ray("shard.distributor")
