"""Seed spreads of named experiments, as a Markdown table: `make ablation` and `make methods` name every run
`<row>-s<seed>`; this groups the runs by row and gives each metric's mean and sample standard deviation over the
seeds (and n), in the order the rows were first run.

    python -m pipeline.experiments [--metric toy_long.trained.i2t_R@1 ...] [--rows stretch-only full ...]
                                   [--split test|dev] [--baseline full]

Reads DVC's experiments (`dvc.api.exp_show`: those derived from the Git HEAD); an experiment whose name does not end
in `-s<seed>` is a row of its own. `--split dev` reads every metric from metrics/eval_dev.json, where DVC names it
`dev.<metric>` (the table still names it `<metric>`). `--baseline ROW` adds a second table: for each other row and
metric, the mean of (row - baseline) over the seeds both rows ran, paired by seed number, with its 95% Student t
interval when there are at least two.
"""
import math
import re
import statistics

from core.cli import ArgumentParser, UserError, user_errors

DEFAULT_METRICS = ("toy_long.trained.i2t_R@1", "toy_long.trained.t2i_R@1", "toy_layout.trained.i2t_R@1",
                   "toy_short_scenes.trained.i2t_R@1", "toy_short_scenes.trained.t2i_R@1",
                   "toy_zeroshot_colour.trained.top1", "toy_zeroshot_shape.trained.top1", "toy_zeroshot.trained.top1")
SPLITS = ("test", "dev")  # metrics/eval.json, and metrics/eval_dev.json: the same keys under "dev"
SPLIT_HELP = "test: metrics/eval.json (default); dev: metrics/eval_dev.json"
# Student t's 97.5% quantile (two-sided 95%) for 1..30 degrees of freedom, as printed in standard t tables (e.g.
# NIST/SEMATECH e-Handbook of Statistical Methods, 1.3.6.7.2); beyond 30 the value for 30 (wide by under 5%).
T_975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
         2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)
_SEEDED = re.compile(r"^(?P<row>.+)-s(?P<seed>\d+)$")


def row_and_seed(name: str) -> tuple[str, int | None]:
    """`<row>-s<seed>` -> (row, seed); any other name is a row of its own, seed None."""
    match = _SEEDED.match(name)
    return (match["row"], int(match["seed"])) if match else (name, None)


def metric_key(metric: str, split: str) -> str:
    """The key DVC gives `metric` of that split (metrics/eval_dev.json nests eval.json's keys under "dev")."""
    return metric if split == "test" else f"{split}.{metric}"


def metric_value(experiment: dict, key: str) -> float | None:
    """The value of `key`: DVC names it `key`, or `file:key` when several metrics files hold that key; the whole key
    must match, so `dev.toy_long...` is never read as `toy_long...`."""
    for name, value in experiment.items():
        if (name == key or name.endswith(f":{key}")) and isinstance(value, (int, float)):
            return float(value)
    return None


def spreads(experiments: list[dict], metrics: tuple[str, ...], split: str = "test") -> dict[str, dict]:
    """{row: {"seeds": [..], metric: {seed: value}}} of the named experiments, oldest row first."""
    rows: dict[str, dict] = {}
    for experiment in reversed([e for e in experiments if e.get("Experiment")]):  # exp_show lists newest first
        row, seed = row_and_seed(experiment["Experiment"])
        entry = rows.setdefault(row, {"seeds": [], **{m: {} for m in metrics}})
        entry["seeds"].append(seed)
        for metric in metrics:
            value = metric_value(experiment, metric_key(metric, split))
            if value is not None:
                entry[metric][seed] = value
    return rows


def cell(values: list[float]) -> str:
    """`mean ± sd` over the seeds (sample sd; a lone value stands alone), empty without values."""
    if not values:
        return ""
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}"


def table(rows: dict[str, dict], metrics: tuple[str, ...], split: str = "test") -> str:
    lines = [f"| run ({split} split) | n | {' | '.join(metrics)} |", "|---|---|" + "---|" * len(metrics)]
    for row, entry in rows.items():
        cells = " | ".join(cell(list(entry[m].values())) for m in metrics)
        lines.append(f"| {row} | {len(entry['seeds'])} | {cells} |")
    return "\n".join(lines)


def paired(entry: dict, baseline: dict, metric: str) -> list[float]:
    """row - baseline at each seed number both have a value at, in seed order."""
    seeds = sorted(s for s in entry[metric].keys() & baseline[metric].keys() if s is not None)
    return [entry[metric][s] - baseline[metric][s] for s in seeds]


def difference_cell(differences: list[float]) -> str:
    """`+mean [low, high] (n=..)`: the mean paired difference and its 95% t interval; a lone one has no interval."""
    if not differences:
        return ""
    n, mean = len(differences), statistics.mean(differences)
    if n == 1:
        return f"{mean:+.1f} (n=1)"
    half = T_975[min(n - 1, len(T_975)) - 1] * statistics.stdev(differences) / math.sqrt(n)
    return f"{mean:+.1f} [{mean - half:+.1f}, {mean + half:+.1f}] (n={n})"


def differences_table(rows: dict[str, dict], baseline: dict, name: str, metrics: tuple[str, ...],
                      split: str = "test") -> str:
    lines = [f"| run - {name} ({split} split) | {' | '.join(metrics)} |", "|---|" + "---|" * len(metrics)]
    for row, entry in rows.items():
        if row != name:
            lines.append(f"| {row} | {' | '.join(difference_cell(paired(entry, baseline, m)) for m in metrics)} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    with user_errors():
        parser = ArgumentParser(prog="python -m pipeline.experiments", description=__doc__.split("\n\n")[0])
        parser.add_argument("--metric", action="append", help="a metric key as `dvc exp show` names it (repeat)")
        parser.add_argument("--rows", nargs="+", help="only these rows, in this order")
        parser.add_argument("--split", choices=SPLITS, default="test", help=SPLIT_HELP)
        parser.add_argument("--baseline", metavar="ROW", help="also a table of paired differences from this row")
        args = parser.parse_args(argv)
        import dvc.api  # here: it takes seconds, and --help should not

        metrics = tuple(args.metric or DEFAULT_METRICS)
        rows = spreads(dvc.api.exp_show(), metrics, args.split)
        missing = [r for r in dict.fromkeys([*(args.rows or []), args.baseline]) if r and r not in rows]
        if missing:
            raise UserError(f"no experiments named {', '.join(missing)} (-s<seed> runs) from this commit")
        shown = {r: rows[r] for r in args.rows} if args.rows else rows
        print(table(shown, metrics, args.split))
        if args.baseline:
            print()
            print(differences_table(shown, rows[args.baseline], args.baseline, metrics, args.split))


if __name__ == "__main__":
    main()
