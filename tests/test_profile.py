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


def test_paper_profile_is_valid_with_a_real_url_list(tmp_path, params_file):
    profile = yaml.safe_load((REPO / "configs/paper-30m.yaml").read_text())
    urls = tmp_path / "urls.parquet"
    urls.write_bytes(b"")
    profile["source"]["url_list"]["path"] = str(urls)
    (tmp_path / "profile.yaml").write_text(yaml.safe_dump(profile))
    apply(tmp_path / "profile.yaml", params_file)
    params = load_params(params_file)
    assert params.download.distributor == "pyspark" and params.download.number_sample_per_shard == 10000
    assert params.source.toyworld.num_images == 3000  # untouched keys keep their values
    assert "# The embedded default" in params_file.read_text()  # comments survive


def test_bad_profile_names_the_key_and_writes_nothing(tmp_path, params_file):
    before = params_file.read_text()
    (tmp_path / "bad.yaml").write_text("download:\n  thread_count: lots\n")
    with pytest.raises(ParamsError, match="download.thread_count: expected int, got 'lots'"):
        apply(tmp_path / "bad.yaml", params_file)
    assert params_file.read_text() == before
