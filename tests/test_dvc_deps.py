"""dvc.yaml lists exactly the code each stage imports, so DVC never calls a stale result up to date and an edit
reruns only the stages that import the edited file."""
import pytest

from tests.conftest import REPO
from tests.stage_imports import code_deps, covered, imported_files, stage_module, stages

STAGES = stages()


@pytest.mark.parametrize("name", sorted(STAGES))
def test_every_imported_module_is_a_dep(name):
    stage = STAGES[name]
    deps = code_deps(stage)
    missing = sorted(f for f in imported_files(stage_module(stage)) if not covered(f, deps))
    assert not missing, f"stage {name}: imports not in dvc.yaml deps: {missing}"


@pytest.mark.parametrize("name", sorted(STAGES))
def test_no_dep_covers_code_the_stage_does_not_import(name):
    stage = STAGES[name]
    imported = imported_files(stage_module(stage))
    for dep in code_deps(stage):
        path = REPO / dep
        files = sorted(p.relative_to(REPO).as_posix() for p in path.rglob("*.py")) if path.is_dir() else [dep]
        unused = [f for f in files if f not in imported and (f == dep or not f.endswith(("__init__.py", "__main__.py")))]
        assert not unused, f"stage {name}: dep {dep} covers code the stage never imports: {unused}"


def test_a_module_used_by_one_stage_does_not_rerun_the_others():
    """At scale, an edit to caption code must not rerun download: spot-check the split."""
    caption = imported_files("stages.caption")
    assert any(f.startswith("pipeline/caption/") for f in caption)
    for other in ("stages.source", "stages.download", "stages.shard", "stages.train", "stages.evaluate"):
        assert not any(f.startswith("pipeline/caption/") for f in imported_files(other)), other
