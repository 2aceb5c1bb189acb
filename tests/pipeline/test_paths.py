"""pipeline/paths.py fills in dvc.yaml's paths as DVC does: the commands it gives are those `dvc repro` ran."""
import shlex

import yaml

from pipeline.paths import pipeline_paths, resolve, stage_command
from tests.conftest import REPO


def test_each_stage_command_is_the_one_dvc_recorded():
    locked = yaml.safe_load((REPO / "dvc.lock").read_text())["stages"]
    for stage, entry in locked.items():
        assert stage_command(stage)[1:] == shlex.split(entry["cmd"])[1:], stage


def test_nested_names_resolve_and_other_text_is_kept():
    paths = pipeline_paths()
    assert resolve("cat ${paths.metrics.eval} ${train.lr}") == f"cat {paths['metrics']['eval']} ${{train.lr}}"
