"""The seed-spread table and the paired differences, read from real `dvc exp run` experiments in a temporary
repository."""
import math
import statistics

import pytest

from pipeline.experiments import difference_cell, main, metric_value, spreads
from tests.conftest import assert_user_error
from tests.dvc_experiments import experiment_repo

pytestmark = pytest.mark.expensive  # its fixture runs `dvc exp run`s (~20 s)

# Made-up scores that depend on both params (so rows and seeds differ, and paired differences vary with the seed);
# the dev split's differ from the test split's; a second metrics file as the real DAG has.
EVALUATE = """import json, os, yaml
p = yaml.safe_load(open("params.yaml"))
os.makedirs("metrics", exist_ok=True)
test, dev = 10 * p["lr"] + p["lr"] * p["seed"] ** 2, 100 - p["lr"] * p["seed"]
json.dump({"toy_long": {"trained": {"i2t_R@1": test}}}, open("metrics/eval.json", "w"))
json.dump({"dev": {"toy_long": {"trained": {"i2t_R@1": dev}}}}, open("metrics/eval_dev.json", "w"))
json.dump({"steps": 3}, open("metrics/train.json", "w"))
"""
# (name, lr, seed): slow and fast share seeds 0 and 2 (fast's seed 1 has no pair); lone shares seed 1 with fast only.
RUNS = [("slow-s0", 1, 0), ("slow-s2", 1, 2), ("fast-s0", 2, 0), ("fast-s1", 2, 1), ("fast-s2", 2, 2),
        ("lone-s1", 3, 1)]
METRIC = "toy_long.trained.i2t_R@1"


def score(lr: int, seed: int) -> float:
    return 10 * lr + lr * seed ** 2


@pytest.fixture(scope="module")
def experiments(tmp_path_factory):
    return experiment_repo(tmp_path_factory.mktemp("exp"), {"seed": 0, "lr": 1}, EVALUATE,
                           ["metrics/eval.json", "metrics/eval_dev.json", "metrics/train.json"],
                           [(name, {"lr": lr, "seed": seed}) for name, lr, seed in RUNS])


def test_rows_group_seeds_with_mean_and_sample_sd(experiments, monkeypatch, capsys):
    monkeypatch.chdir(experiments)
    main(["--metric", METRIC, "--metric", "steps"])
    lines = capsys.readouterr().out.splitlines()
    slow, fast = [score(1, 0), score(1, 2)], [score(2, s) for s in (0, 1, 2)]
    assert lines[0] == f"| run (test split) | n | {METRIC} | steps |"
    assert lines[2:] == [f"| slow | 2 | {statistics.mean(slow):.1f} ± {statistics.stdev(slow):.1f} | 3.0 ± 0.0 |",
                         f"| fast | 3 | {statistics.mean(fast):.1f} ± {statistics.stdev(fast):.1f} | 3.0 ± 0.0 |",
                         f"| lone | 1 | {score(3, 1):.1f} | 3.0 |"]


def test_dev_split_reads_the_dev_metrics_under_their_plain_names(experiments, monkeypatch, capsys):
    monkeypatch.chdir(experiments)
    main(["--split", "dev", "--metric", METRIC, "--rows", "slow", "lone"])
    lines = capsys.readouterr().out.splitlines()
    slow = [100 - 1 * 0, 100 - 1 * 2]
    assert lines[0] == f"| run (dev split) | n | {METRIC} |"
    assert lines[2:] == [f"| slow | 2 | {statistics.mean(slow):.1f} ± {statistics.stdev(slow):.1f} |",
                         f"| lone | 1 | {100 - 3 * 1:.1f} |"]


def test_paired_differences_with_t_intervals(experiments, monkeypatch, capsys):
    monkeypatch.chdir(experiments)
    main(["--metric", METRIC, "--baseline", "slow"])
    lines = capsys.readouterr().out.split("\n\n")[1].splitlines()
    # fast - slow at seeds 0 and 2 (not fast's seed 1): 10 and 14; t quantile for 1 df is tan(0.475 pi) = 12.706
    diffs = [score(2, 0) - score(1, 0), score(2, 2) - score(1, 2)]
    mean, half = statistics.mean(diffs), math.tan(0.475 * math.pi) * statistics.stdev(diffs) / math.sqrt(2)
    assert lines[0] == f"| run - slow (test split) | {METRIC} |"
    assert lines[2:] == [f"| fast | +{mean:.1f} [{mean - half:+.1f}, +{mean + half:.1f}] (n=2) |",
                         "| lone |  |"]  # no seed in common with slow
    assert lines[2] == "| fast | +12.0 [-13.4, +37.4] (n=2) |"

    main(["--metric", METRIC, "--baseline", "fast", "--rows", "lone", "slow"])
    lines = capsys.readouterr().out.split("\n\n")[1].splitlines()
    assert lines[2:] == [f"| lone | +{score(3, 1) - score(2, 1):.1f} (n=1) |",
                         f"| slow | -{mean:.1f} [-{mean + half:.1f}, +{half - mean:.1f}] (n=2) |"]


def test_interval_uses_the_t_quantile_for_n_minus_1_degrees_of_freedom():
    # 2 df: the t distribution's p-quantile is (2p - 1) / sqrt(2p(1 - p)) in closed form, 4.303 at p = 0.975
    diffs = [1.0, 2.0, 6.0]
    half = 0.95 / math.sqrt(2 * 0.975 * 0.025) * statistics.stdev(diffs) / math.sqrt(3)
    assert difference_cell(diffs) == f"+3.0 [{3 - half:+.1f}, {3 + half:+.1f}] (n=3)"
    assert difference_cell([]) == ""


def test_a_name_without_a_seed_is_a_row_of_its_own():
    rows = spreads([{"Experiment": "single", "x": 2.0}, {"Experiment": None, "x": 1.0}], ("x",))
    assert rows == {"single": {"seeds": [None], "x": {None: 2.0}}}


def test_a_dev_key_is_never_read_as_the_test_key():
    # as dvc.api.exp_show names them: `file:key` only where several metrics files hold the same key
    experiment = {"dev.toy_long.trained.i2t_R@1": 1.0, "metrics/eval_dev.json:dev.steps": 2.0}
    assert metric_value(experiment, "toy_long.trained.i2t_R@1") is None
    assert metric_value(experiment, "steps") is None
    assert metric_value(experiment, "dev.steps") == 2.0
    assert metric_value({**experiment, "metrics/eval.json:toy_long.trained.i2t_R@1": 3.0}, METRIC) == 3.0


def test_rows_pick_and_order_and_a_missing_row_or_baseline_is_a_user_error(experiments, monkeypatch, capsys):
    monkeypatch.chdir(experiments)
    main(["--metric", METRIC, "--rows", "lone", "slow"])
    assert [line.split(" | ")[0] for line in capsys.readouterr().out.splitlines()[2:]] == ["| lone", "| slow"]
    assert_user_error(capsys, lambda: main(["--rows", "nope"]), "nope")
    assert_user_error(capsys, lambda: main(["--baseline", "gone"]), "gone")
