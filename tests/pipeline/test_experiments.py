"""The seed-spread table, read from real `dvc exp run` experiments in a temporary repository."""
import statistics
import sys

import pytest

from pipeline.experiments import main
from tests.conftest import assert_user_error, run

STAGE = f"""stages:
  evaluate:
    cmd: {sys.executable} evaluate.py
    deps: [evaluate.py]
    params: [seed, lr]
    metrics: [{{metrics/eval.json: {{cache: false}}}}, {{metrics/train.json: {{cache: false}}}}]
"""
# A made-up score that depends on both params, so rows and seeds differ; a second metrics file as the real DAG has.
EVALUATE = """import json, os, yaml
p = yaml.safe_load(open("params.yaml"))
os.makedirs("metrics", exist_ok=True)
json.dump({"toy_long": {"trained": {"i2t_R@1": 10 * p["lr"] + p["seed"] ** 2}}}, open("metrics/eval.json", "w"))
json.dump({"steps": 3}, open("metrics/train.json", "w"))
"""


@pytest.fixture(scope="module")
def experiments(tmp_path_factory):
    root = tmp_path_factory.mktemp("exp")
    (root / "params.yaml").write_text("seed: 0\nlr: 1\n")
    (root / "dvc.yaml").write_text(STAGE)
    (root / "evaluate.py").write_text(EVALUATE)
    (root / "metrics").mkdir()
    run(["git", "init", "-q"], root)
    run(["dvc", "init", "-q"], root)
    run(["git", "add", "-A"], root)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init"], root)
    for name, lr, seed in [("slow-s0", 1, 0), ("slow-s2", 1, 2), ("single", 2, 0)]:
        run(["dvc", "exp", "run", "-n", name, "-S", f"lr={lr}", "-S", f"seed={seed}"], root)
    return root


def test_rows_group_seeds_with_mean_and_sample_sd(experiments, monkeypatch, capsys):
    monkeypatch.chdir(experiments)
    main(["--metric", "toy_long.trained.i2t_R@1", "--metric", "steps"])
    lines = capsys.readouterr().out.splitlines()
    slow = [10, 14]  # lr 1, seeds 0 and 2
    assert lines[2:] == [f"| slow | 2 | {statistics.mean(slow):.1f} ± {statistics.stdev(slow):.1f} | 3.0 ± 0.0 |",
                         "| single | 1 | 20.0 | 3.0 |"]


def test_rows_pick_and_order_and_a_missing_row_is_a_user_error(experiments, monkeypatch, capsys):
    monkeypatch.chdir(experiments)
    main(["--metric", "toy_long.trained.i2t_R@1", "--rows", "single", "slow"])
    assert [line.split(" | ")[0] for line in capsys.readouterr().out.splitlines()[2:]] == ["| single", "| slow"]
    assert_user_error(capsys, lambda: main(["--rows", "nope"]), "nope")
