"""DVC's own views of a run read well: `dvc exp show` as docs/pipeline.md gives it fits a 120-column terminal with
the results first, and bench timings are not among the run's metrics."""
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline.paths import resolve
from tests.conftest import REPO

pytestmark = pytest.mark.expensive  # dvc in a temporary repository

DVC = Path(sys.executable).parent / "dvc"
# As docs/pipeline.md, "Reading a run", gives it (the test checks the docs hold it verbatim).
EXP_SHOW = "dvc exp show --drop '.*' --keep '^(Experiment|toy_(long|short)\\.(i2t|t2i)|toy_zeroshot\\.top1)$'"
RESULTS = ["toy_long.i2t", "toy_long.t2i", "toy_short.i2t", "toy_short.t2i", "toy_zeroshot.top1"]


def _run(command: list[str], cwd: Path) -> str:
    env = {**os.environ, "COLUMNS": "120", "PATH": f"{DVC.parent}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A git + DVC repository with this project's params and every metrics file its stages declare (one stage that
    declares them all), the committed metrics, and two experiments saved with other results."""
    root = tmp_path_factory.mktemp("views")
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"].values()
    metrics = [resolve(next(iter(m)) if isinstance(m, dict) else m)
               for stage in stages for m in stage.get("metrics", [])]
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"run": {
        "cmd": "true", "params": sorted({p for s in stages for p in s.get("params", []) if isinstance(p, str)}),
        "metrics": [{m: {"cache": False}} for m in metrics]}}}))
    (root / "params.yaml").write_text((REPO / "params.yaml").read_text())
    for path in metrics:
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text((REPO / path).read_text())
    _run(["git", "init", "-q"], root)
    _run([str(DVC), "init", "-q"], root)
    _run(["git", "add", "-A"], root)
    _run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "run"], root)
    results = json.loads((root / "metrics/results.json").read_text())
    for change in (1.5, -2.5):
        changed = {b: {k: round(v + change, 1) for k, v in scores.items()} for b, scores in results.items()}
        (root / "metrics/results.json").write_text(json.dumps(changed))
        _run([str(DVC), "exp", "save", "-q"], root)
    return root


def test_the_documented_exp_show_fits_120_columns_with_the_results_first(workspace):
    assert EXP_SHOW in (REPO / "docs/pipeline.md").read_text()
    table = _run(shlex.split(EXP_SHOW) + ["--no-pager"], workspace)
    lines = table.splitlines()
    assert max(map(len, lines)) <= 120 and "…" not in table, table
    header = next(line for line in lines if "Experiment" in line).split()
    assert header == ["Experiment", *RESULTS]
    assert sum("[" in line for line in lines) == 2  # both experiments, each with its numbers
    assert sum(bool(re.search(r"\d+\.\d", line)) for line in lines) == 4  # workspace, main and the two experiments


def test_bench_timings_are_not_run_metrics():
    declared = yaml.safe_load((REPO / "dvc.yaml").read_text())
    assert "metrics" not in declared  # top-level metrics: only the stages' own
    files = [resolve(next(iter(m)) if isinstance(m, dict) else m) for s in declared["stages"].values()
             for m in s.get("metrics", [])]
    assert "metrics/results.json" in files and not any(f.startswith("bench/") for f in files)


def test_metrics_diff_names_the_changed_results(workspace):
    diff = _run([str(DVC), "metrics", "diff", "HEAD", "--targets", "metrics/results.json"], workspace)
    assert all(f" {name} " in diff for name in RESULTS), diff
