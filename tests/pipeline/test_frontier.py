"""The trade-off plot and its table, read from real `dvc exp run` experiments in a temporary repository."""
import statistics

import pytest

from pipeline.frontier import main, on_front
from tests.conftest import assert_user_error
from tests.dvc_experiments import experiment_repo

pytestmark = pytest.mark.expensive  # its fixture runs `dvc exp run`s (~17 s)

# Made-up scores from the params; the base model's are fixed; the dev split's are the test split's less 5.
EVALUATE = """import json, os, yaml
p = yaml.safe_load(open("params.yaml"))
m, lr, e, s = p["method"] == "stretch-only", p["lr"], p["epochs"], p["seed"]
trained = {"toy_zeroshot": {"top1": 90 - 100 * lr * e - 4 * m + s},
           "toy_long": {"i2t_R@1": 20 + 1000 * lr + e + s, "t2i_R@1": 22 + 1000 * lr},
           "toy_short": {"i2t_R@1": 30 - 10 * m, "t2i_R@1": 34 - 100 * lr - s}}
base = {"toy_zeroshot": {"top1": 97.5}, "toy_long": {"i2t_R@1": 18, "t2i_R@1": 15},
        "toy_short": {"i2t_R@1": 18, "t2i_R@1": 17}}
scores = {b: {"trained": trained[b], "base": base[b]} for b in trained}
os.makedirs("metrics", exist_ok=True)
json.dump(scores, open("metrics/eval.json", "w"))
dev = {b: {model: {k: v - 5 for k, v in values.items()} for model, values in models.items()}
       for b, models in scores.items()}
json.dump({"dev": dev}, open("metrics/eval_dev.json", "w"))
"""
# (name, method, lr, epochs, seed); the last is another sweep's
RUNS = [("frontier-fixclip-lr0.001-e1-s0", "fixclip", 0.001, 1, 0),
        ("frontier-fixclip-lr1e-2-e2-s0", "fixclip", 0.01, 2, 0),
        ("frontier-stretch-only-lr0.001-e1-s0", "stretch-only", 0.001, 1, 0),
        ("frontier-fixclip-lr0.001-e1-s1", "fixclip", 0.001, 1, 1),
        ("sweep-fixclip-lr0.005-e3-s0", "fixclip", 0.005, 3, 0)]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
ROUNDING = 0.05 + 1e-9  # the table gives one decimal


def expected(method: str, lr: float, epochs: int, seeds: list[int]) -> list[float]:
    """zero-shot, long-text and alt-text of a point: the formulas above, averaged over seeds by hand."""
    m = method == "stretch-only"
    zeroshot = statistics.mean(90 - 100 * lr * epochs - 4 * m + s for s in seeds)
    long_text = statistics.mean([statistics.mean(20 + 1000 * lr + epochs + s for s in seeds), 22 + 1000 * lr])
    alt_text = statistics.mean([30 - 10 * m, statistics.mean(34 - 100 * lr - s for s in seeds)])
    return [zeroshot, long_text, alt_text]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    return experiment_repo(tmp_path_factory.mktemp("frontier"),
                           {"method": "fixclip", "lr": 0.001, "epochs": 1, "seed": 0}, EVALUATE,
                           ["metrics/eval.json", "metrics/eval_dev.json"],
                           [(name, {"method": method, "lr": lr, "epochs": epochs, "seed": seed})
                            for name, method, lr, epochs, seed in RUNS])


def rows(out: str) -> tuple[list[list], list[list[float]]]:
    """The table's rows: [method, lr, budget, n, fronts] each, and their three values."""
    cells = [[c.strip() for c in line.split("|")[1:-1]] for line in out.splitlines()[2:]]
    return [[*c[:3], int(c[3]), c[7]] for c in cells], [[float(v) for v in c[4:7]] for c in cells]


def test_points_table_and_png(sweep, monkeypatch, capsys):
    monkeypatch.chdir(sweep)
    main(["--out", "plots/frontier.png"])
    out = capsys.readouterr().out
    assert out.splitlines()[0] == ("| method (test split) | lr | budget | n | zero-shot | long-text | alt-text | "
                                   "on the front of |")
    points, values = rows(out)
    # Neither fixclip point beats the other on both axes of either panel: both are on both fronts.
    both = "zero-shot, alt-text"
    assert points == [["base", "", "", 4, ""], ["fixclip", "0.001", "e1", 2, both], ["fixclip", "1e-2", "e2", 1, both],
                      ["stretch-only", "0.001", "e1", 1, both]]
    assert values == [[97.5, 16.5, 17.5], pytest.approx(expected("fixclip", 0.001, 1, [0, 1]), abs=ROUNDING),
                      pytest.approx(expected("fixclip", 0.01, 2, [0]), abs=ROUNDING),
                      pytest.approx(expected("stretch-only", 0.001, 1, [0]), abs=ROUNDING)]
    png = (sweep / "plots/frontier.png").read_bytes()
    assert png[:8] == PNG_SIGNATURE and png[12:16] == b"IHDR"
    width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
    assert width > height > 0  # two panels side by side


def test_dev_split_and_another_prefix(sweep, monkeypatch, capsys):
    monkeypatch.chdir(sweep)
    main(["--out", "plots/sweep.png", "--split", "dev", "--prefix", "sweep"])
    points, values = rows(capsys.readouterr().out)
    assert points == [["base", "", "", 1, ""], ["fixclip", "0.005", "e3", 1, "zero-shot, alt-text"]]
    dev = [v - 5 for v in expected("fixclip", 0.005, 3, [0])]
    assert values == [[92.5, 11.5, 12.5], pytest.approx(dev, abs=ROUNDING)]
    assert (sweep / "plots/sweep.png").read_bytes()[:8] == PNG_SIGNATURE


def test_no_matching_experiment_is_a_user_error(sweep, monkeypatch, capsys):
    monkeypatch.chdir(sweep)
    assert_user_error(capsys, lambda: main(["--out", "plots/none.png", "--prefix", "nope"]),
                      "nope-<method>-lr<rate>-<budget>-s<seed>")
    assert not (sweep / "plots/none.png").exists()


def test_the_front_holds_the_points_no_other_point_of_the_method_beats_on_both_axes():
    def point(method, x, y):
        return {"method": method, "zero-shot": x, "long-text": y}
    a, b, c, d = point("m", 80, 50), point("m", 90, 40), point("m", 79, 49), point("m", 80, 49)
    other = point("n", 95, 60)  # another method's point beats them all but belongs to another line
    found = [a, b, c, d, other]
    assert [on_front(p, found, "zero-shot") for p in found] == [True, True, False, False, True]
