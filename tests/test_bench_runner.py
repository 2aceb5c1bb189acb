"""`python -m bench`'s runner on tiny fake bench scripts (real subprocesses): rows, goals, failures, the table and
bench/results.json. No timing is asserted; the real benches are not run here."""
import json
import sys
import textwrap

import pytest

from bench.__main__ import Row, main, run_bench, table, write_metrics
from tests.conftest import assert_user_error

ROWS = [
    {"name": "fast", "ours": 2.0, "anchor": 1.0, "anchor_name": "a", "unit": "images/s", "goal": ">= 0.95"},
    {"name": "slow", "ours": 1.0, "anchor": 2.0, "anchor_name": "a", "unit": "images/s", "goal": ">= 0.95"},
    {"name": "cheap", "ours": 1.0, "anchor": 2.0, "anchor_name": "a", "unit": "samples/s", "goal": "<= 2.3"},
    {"name": "wrong", "ours": 2.0, "anchor": 1.0, "anchor_name": "a", "unit": "images/s", "goal": ">= 1.0",
     "ok": False},
]


def script(tmp_path, name: str, body: str) -> list[str]:
    path = tmp_path / f"{name}.py"
    path.write_text(textwrap.dedent(body))
    return [sys.executable, str(path)]


def fake_bench(tmp_path) -> list[Row]:
    body = f"""
        import json
        print("progress: warm-up, 3 repeats")
        print(json.dumps({{"bench": "fake", "rows": {ROWS!r}}}))
    """
    return run_bench("fake", script(tmp_path, "fake", body), cwd=tmp_path)


def test_rows_come_from_the_last_json_line_and_goals_are_on_the_ratio(tmp_path):
    rows = fake_bench(tmp_path)
    assert [(r.name, r.ratio, r.met) for r in rows] == [
        ("fast", 2.0, True), ("slow", 0.5, False), ("cheap", 0.5, True), ("wrong", 2.0, False)]
    assert not any(r.failure for r in rows)


def test_a_failed_correctness_check_shows_in_the_table(tmp_path):
    lines = table(fake_bench(tmp_path)).splitlines()
    verdicts = {line.split()[1]: line for line in lines[2:]}
    assert "yes" in verdicts["fast"] and " no " in verdicts["slow"] and "no: check failed" in verdicts["wrong"]


def test_a_script_that_exits_non_zero_or_prints_no_result_is_a_failed_row(tmp_path):
    crashed = run_bench("crash", script(tmp_path, "crash", "import sys; print('boom'); sys.exit(3)"), cwd=tmp_path)
    silent = run_bench("silent", script(tmp_path, "silent", "print('no json here')"), cwd=tmp_path)
    bad = run_bench("bad", script(tmp_path, "bad", 'print(\'{"bench": "bad", "rows": [{"name": "x"}]}\')'),
                    cwd=tmp_path)
    assert [(r.failure, r.met) for r in crashed] == [("exit 3", False)]
    assert "no JSON result line" in silent[0].failure
    assert "missing ours" in bad[0].failure
    assert "FAILED" in table(crashed).splitlines()[2]


def test_metrics_file_has_one_flat_entry_per_row_and_keeps_other_benches_on_request(tmp_path):
    path = tmp_path / "bench/results.json"
    skipped = Row("repro-noop", "no-op dvc repro", unit="s", goal="<= 5", skipped="workspace not up to date")
    timed = Row("repro-full", "first full dvc repro", ours=9.5, unit="min", goal="<= 15")
    write_metrics(path, [skipped, timed], {"cores": 2}, keep_others=False)
    write_metrics(path, fake_bench(tmp_path), {"cores": 4}, keep_others=True)
    metrics = json.loads(path.read_text())
    assert metrics["fake/fast"] == {"ours": 2.0, "anchor": 1.0, "ratio": 2.0, "unit": "images/s", "met": True}
    assert metrics["fake/wrong"]["ok"] is False and metrics["fake/wrong"]["met"] is False
    assert metrics["repro-full/first full dvc repro"] == {"ours": 9.5, "unit": "min", "met": True}
    assert metrics["repro-noop/no-op dvc repro"] == {"skipped": "workspace not up to date"}
    assert metrics["machine"] == {"cores": 4}
    write_metrics(path, [Row("fake", "script failed", failure="exit 3")], {"cores": 4}, keep_others=True)
    metrics = json.loads(path.read_text())
    assert metrics["fake/script failed"] == {"failed": "exit 3", "met": False}
    assert not any(key.startswith("fake/f") for key in metrics)


def test_unknown_bench_name_is_refused_naming_the_known_ones(capsys):
    assert_user_error(capsys, lambda: main(["--only", "shard,nope"]), "unknown nope; known: source, download, caption")


def test_a_bad_argument_is_one_line(capsys):
    assert_user_error(capsys, lambda: main(["--quick", "--repeats", "3"]), "unrecognized arguments: --repeats 3")


def test_a_row_without_a_goal_is_information_not_a_verdict(tmp_path):
    body = """
        import json
        row = {"name": "shown", "ours": 1.0, "anchor": 4.0, "anchor_name": "a", "unit": "MiB/s", "goal": ""}
        print(json.dumps({"bench": "fake", "rows": [row]}))
    """
    [row] = run_bench("fake", script(tmp_path, "info", body), cwd=tmp_path)
    assert (row.ratio, row.met, row.verdict(), row.failure) == (0.25, None, "info", "")
    assert "met" not in row.metrics() and row.metrics()["ratio"] == 0.25
    line = table([row]).splitlines()[-1]
    assert "0.250" in line and "info" in line and "ratio" not in line
