"""params.yaml is validated in full, before any work, with errors that name the key."""
import copy
import subprocess

import pytest
import yaml

from pipeline.params import Params, ParamsError, load_params, missing_keys, parse_params
from pipeline.params.section import Section
from pipeline.paths import stage_command
from tests.conftest import REPO, stage_env


def test_shipped_params_are_valid():
    params = load_params(REPO / "params.yaml")
    assert params.source.kind == "toyworld"


def test_params_yaml_lists_every_schema_key():
    """No hidden defaults: what runs is what params.yaml (and so DVC) shows."""
    assert missing_keys(Params, yaml.safe_load((REPO / "params.yaml").read_text())) == []


def _key_paths(raw: dict, schema=Params, prefix="") -> list[tuple[str, ...]]:
    """Every key path of params.yaml down to the schema's sub-sections (a section is a path too)."""
    paths = []
    for name, value in raw.items():
        paths.append((*prefix, name))
        field = schema.model_fields[name].annotation
        if isinstance(value, dict) and isinstance(field, type) and issubclass(field, Section):
            paths += _key_paths(value, field, (*prefix, name))
    return paths


def test_every_deleted_key_is_named():
    """Deleting any key of params.yaml, or a whole section, fails validation naming it (no silent default)."""
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    paths = _key_paths(raw)
    assert ("train",) in paths and ("caption", "model") in paths and ("caption", "server", "dtype") in paths
    for path in paths:
        edited = copy.deepcopy(raw)
        section = edited
        for name in path[:-1]:
            section = section[name]
        del section[path[-1]]
        with pytest.raises(ParamsError) as info:
            parse_params(edited, complete=True)
        assert str(info.value) == f"params.yaml: invalid params: {'.'.join(path)}: missing key", path
        parse_params(edited)  # as a partial mapping (profiles, tests) the schema's default applies


def test_missing_key_in_the_file_fails_the_stage(tmp_path, capsys):
    text = (REPO / "params.yaml").read_text()
    assert "  model: assets/tiny_llava/model" in text
    (tmp_path / "params.yaml").write_text(text.replace("  model: assets/tiny_llava/model", "", 1))
    with pytest.raises(ParamsError, match=r"params.yaml: invalid params: caption.model: missing key$"):
        load_params(tmp_path / "params.yaml")


@pytest.mark.parametrize(
    "raw, message",
    [
        ({"download": {"thread_count": "many"}}, "download.thread_count: expected int, got 'many'"),
        ({"download": {"thread_count": "8"}}, "download.thread_count: expected int, got '8'"),
        ({"download": {"timeout": 2.5}}, "download.timeout: expected int, got 2.5"),
        ({"download": {"threads": 8}}, "download.threads: unknown key"),
        ({"nonsense": {}}, "nonsense: unknown key"),
        ({"download": {"distributor": "slurm"}}, "download.distributor: input should be"),
        ({"download": {"image_size": 0}}, "download.image_size: input should be greater than or equal to 8"),
        ({"source": {"kind": "url_list", "url_list": {"path": "missing.csv"}}},
         "source.url_list.path: file not found: 'missing.csv'"),
        ({"source": {"toyworld": {"min_objects": 5, "max_objects": 4}}}, "source.toyworld: min_objects (5) >"),
        ({"source": {"toyworld": {"max_objects": 10}}}, "source.toyworld: max_objects (10) exceeds"),
        ({"source": {"toyworld": {"textures": "yes"}}}, "source.toyworld.textures: expected bool, got 'yes'"),
        ({"train": {"distributor": "ray", "distributed": {"nproc_per_node": 2}}},
         "train.distributed: with distributor ray, Ray Train places the ranks"),
        ({"train": {"distributor": "ray", "ray": {"use_gpu": True}, "device": "cpu"}},
         "train.ray.use_gpu: true, but device is cpu"),
        ({"train": {"distributor": "ray", "device": "cuda"}}, "train.device: cuda needs ray.use_gpu: true"),
    ],
)
def test_bad_params_name_the_key(raw, message):
    with pytest.raises(ParamsError) as info:
        parse_params(raw)
    assert message in str(info.value)


def test_all_errors_reported_at_once():
    with pytest.raises(ParamsError) as info:
        parse_params({"download": {"thread_count": "many", "timeout": "x"}})
    assert "download.thread_count" in str(info.value) and "download.timeout" in str(info.value)


def test_unreadable_params_file(tmp_path):
    (tmp_path / "params.yaml").write_text("download: [unclosed\n")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_params(tmp_path / "params.yaml")
    with pytest.raises(ParamsError, match="file not found"):
        load_params(tmp_path / "absent.yaml")


def test_exponent_floats_as_dvc_writes_them(tmp_path):
    """`dvc exp run -S train.lr=1e-5` writes `lr: 1e-5`, a float in YAML 1.2 and a string in PyYAML's YAML 1.1."""
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["train"]["lr"], raw["train"]["weight_decay"] = "LR", "WD"
    text = yaml.safe_dump(raw, sort_keys=False).replace("lr: LR", "lr: 1e-5").replace("weight_decay: WD",
                                                                                     "weight_decay: 2E+1")
    (tmp_path / "params.yaml").write_text(text)
    params = load_params(tmp_path / "params.yaml")
    assert params.train.lr == 1e-5 and params.train.weight_decay == 20.0
    assert yaml.safe_load("lr: 1e-5") == {"lr": "1e-5"}  # PyYAML's own loader is left as it was
    (tmp_path / "params.yaml").write_text(text.replace("lr: 1e-5", "lr: 1e-5x"))
    with pytest.raises(ParamsError, match="train.lr: expected float, got '1e-5x'"):
        load_params(tmp_path / "params.yaml")


@pytest.mark.parametrize("stage, edit, message", [
    ("source", "bad", "download.thread_count: expected int, got 'many'"),
    ("download", "bad", "download.thread_count: expected int, got 'many'"),
    ("download", "deleted", "download.timeout: missing key"),
    ("source", "no_section", "train: missing key"),
])
def test_stage_fails_before_work_on_bad_params(tmp_path, stage, edit, message):
    """The stage exits 2 with one line naming the key and writes nothing."""
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    if edit == "bad":
        raw["download"]["thread_count"] = "many"
    elif edit == "deleted":
        del raw["download"]["timeout"]
    else:
        del raw["train"]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    env = stage_env()
    env["PYTHONPATH"] = str(REPO)
    proc = subprocess.run(stage_command(stage), cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]


def test_every_default_is_the_value_params_yaml_lists():
    """No hidden defaults: the schema's defaults and params.yaml agree key by key, so what runs is what DVC tracks."""
    listed = parse_params(yaml.safe_load((REPO / "params.yaml").read_text())).model_dump()
    assert Params().model_dump() == listed
