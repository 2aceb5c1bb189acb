"""Scale profiles merge over params.yaml, keep its comments, and are validated before anything is written."""
import shutil

import pytest
import yaml

from pipeline.params import ParamsError, load_params
from pipeline.profile import apply, main
from tests.conftest import REPO, assert_user_error


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


PROFILES = sorted((REPO / "configs").glob("*.yaml"))


def _apply_with_local_paths(name, tmp_path, params_file):
    """Apply configs/<name> with its /data/... and /models/... paths made to exist; returns the merged params."""
    profile = _local_copies(yaml.safe_load((REPO / "configs" / name).read_text()), tmp_path)
    (tmp_path / "profile.yaml").write_text(yaml.safe_dump(profile))
    apply(tmp_path / "profile.yaml", params_file)
    return load_params(params_file)


def test_profiles_are_found():
    assert {"paper-30m.yaml", "gpu-smoke.yaml"} <= {path.name for path in PROFILES}


@pytest.mark.parametrize("profile", PROFILES, ids=lambda path: path.name)
def test_every_profile_is_valid_once_its_paths_exist(profile, tmp_path, params_file):
    _apply_with_local_paths(profile.name, tmp_path, params_file)  # raises ParamsError naming any bad key
    assert "# The embedded default" in params_file.read_text()  # comments survive


def test_paper_profile_is_valid_once_its_paths_exist(tmp_path, params_file):
    params = _apply_with_local_paths("paper-30m.yaml", tmp_path, params_file)
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


def test_gpu_smoke_profile_validates_as_is(params_file):
    """No path the schema checks: `--check` passes before the model snapshot is in place (vLLM checks it at start)."""
    apply(REPO / "configs/gpu-smoke.yaml", params_file)
    params = load_params(params_file)
    assert params.source.kind == "toyworld" and params.source.toyworld.num_images == 1000
    assert params.source.toyworld.image_size == params.download.image_size
    assert params.caption.gpus == ["0"] and params.caption.server.kv_cache_memory_bytes is None
    assert params.caption.server.gpu_memory_utilization and not params.caption.server.enforce_eager
    assert (params.train.device, params.train.precision) == ("cuda", "bf16")
    assert params.train.batch_size % params.train.num_workers == 0
    train_images = params.source.toyworld.num_images * (1 - params.shard.val_fraction)
    assert train_images // params.shard.samples_per_shard >= params.train.num_workers  # a shard per data worker


@pytest.mark.parametrize("case, names", [
    ("missing", ["configs/nope.yaml", "no such file"]),
    ("bad_yaml", ["bad.yaml", "not valid YAML"]),
    ("not_a_mapping", ["list.yaml", "expected a mapping"]),
    ("bad_key", ["download.thread_count: expected int, got 'lots'"]),
])
def test_user_errors_are_one_line_and_exit_2(case, names, tmp_path, params_file, capsys):
    profiles = {"missing": "configs/nope.yaml", "bad_yaml": tmp_path / "bad.yaml",
                "not_a_mapping": tmp_path / "list.yaml", "bad_key": tmp_path / "key.yaml"}
    (tmp_path / "bad.yaml").write_text("download: [unclosed\n")
    (tmp_path / "list.yaml").write_text("- download\n")
    (tmp_path / "key.yaml").write_text("download:\n  thread_count: lots\n")
    before = params_file.read_text()
    assert_user_error(capsys, lambda: main([str(profiles[case]), "--params", str(params_file)]), *names)
    assert params_file.read_text() == before


def test_check_params_yaml_alone(params_file, capsys):
    """`--check` without a profile validates params.yaml as it is, every key present, and never rewrites it."""
    before = params_file.read_bytes()
    main(["--check", "--params", str(params_file)])
    assert capsys.readouterr().out.strip() == f"checked {params_file}"
    params_file.write_text(before.decode().replace("  retries: 0\n", "", 1))
    edited = params_file.read_bytes()
    assert_user_error(capsys, lambda: main(["--check", "--params", str(params_file)]), "download.retries: missing key")
    assert params_file.read_bytes() == edited
    assert_user_error(capsys, lambda: main(["--params", str(params_file)]), "a profile to apply, or --check")


def test_a_profile_cannot_leave_a_key_out(tmp_path, params_file):
    """The merged file is checked for completeness too: a params.yaml missing a section fails, named."""
    params_file.write_text(params_file.read_text().split("\nexport:")[0] + "\n")
    (tmp_path / "p.yaml").write_text("download:\n  thread_count: 4\n")
    with pytest.raises(ParamsError, match=r"export: missing key"):
        apply(tmp_path / "p.yaml", params_file, check_only=True)
