"""Scale profiles merge over params.yaml, keep its comments, and are validated before anything is written."""
import shutil

import pytest
import yaml

from pipeline.params import ParamsError, load_params
from pipeline.profile import apply
from tests.conftest import REPO


@pytest.fixture
def params_file(tmp_path):
    path = tmp_path / "params.yaml"
    shutil.copy(REPO / "params.yaml", path)
    return path


def _local_copies(value, root):
    """The profile with every /data/... or /models/... path replaced by an existing path under root."""
    if isinstance(value, dict):
        return {k: _local_copies(v, root) for k, v in value.items()}
    if isinstance(value, list):
        return [_local_copies(v, root) for v in value]
    if isinstance(value, str) and value.startswith(("/data/", "/models/")):
        path = root / value.lstrip("/")
        if path.suffix:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch()
        else:
            path.mkdir(parents=True, exist_ok=True)
        return str(path)
    return value


def test_paper_profile_is_valid_once_its_paths_exist(tmp_path, params_file):
    profile = _local_copies(yaml.safe_load((REPO / "configs/paper-30m.yaml").read_text()), tmp_path)
    (tmp_path / "profile.yaml").write_text(yaml.safe_dump(profile))
    apply(tmp_path / "profile.yaml", params_file)
    params = load_params(params_file)
    assert params.download.distributor == "pyspark" and params.download.number_sample_per_shard == 10000
    assert params.caption.gpus == [str(i) for i in range(8)] and params.train.distributed.nproc_per_node == 8
    assert [b.name for b in params.evaluate.benchmarks][:2] == ["urban1k", "sharegpt4v_1k"]
    assert params.source.toyworld.num_images == 3000  # untouched keys keep their values
    assert "# The embedded default" in params_file.read_text()  # comments survive


def test_bad_profile_names_the_key_and_writes_nothing(tmp_path, params_file):
    before = params_file.read_text()
    (tmp_path / "bad.yaml").write_text("download:\n  thread_count: lots\n")
    with pytest.raises(ParamsError, match="download.thread_count: expected int, got 'lots'"):
        apply(tmp_path / "bad.yaml", params_file)
    assert params_file.read_text() == before
