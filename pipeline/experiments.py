"""Seed spreads of named experiments, as a Markdown table: `make ablation` and `make methods` name every run
`<row>-s<seed>`; this groups the runs by row and gives each metric's mean and sample standard deviation over the
seeds (and n), in the order the rows were first run.

    python -m pipeline.experiments [--metric toy_long.trained.i2t_R@1 ...] [--rows stretch-only full ...]

Reads DVC's experiments (`dvc.api.exp_show`: those derived from the Git HEAD); an experiment whose name does not end
in `-s<seed>` is a row of its own.
"""
import re
import statistics

from fixclip.cli import ArgumentParser, UserError, user_errors

DEFAULT_METRICS = ("toy_long.trained.i2t_R@1", "toy_long.trained.t2i_R@1", "toy_layout.trained.i2t_R@1",
                   "toy_short_scenes.trained.i2t_R@1", "toy_short_scenes.trained.t2i_R@1",
                   "toy_zeroshot_colour.trained.top1", "toy_zeroshot_shape.trained.top1", "toy_zeroshot.trained.top1")
_SEEDED = re.compile(r"^(?P<row>.+)-s(?P<seed>\d+)$")


def _value(experiment: dict, metric: str) -> float | None:
    """The metric's value: DVC names it `metric`, or `file:metric` when several metrics files hold the key."""
    for key, value in experiment.items():
        if (key == metric or key.endswith(f":{metric}")) and isinstance(value, (int, float)):
            return float(value)
    return None


def spreads(experiments: list[dict], metrics: tuple[str, ...]) -> dict[str, dict]:
    """{row: {"seeds": [..], metric: [values]}} of the named experiments, oldest row first."""
    rows: dict[str, dict] = {}
    for experiment in reversed([e for e in experiments if e.get("Experiment")]):  # exp_show lists newest first
        match = _SEEDED.match(experiment["Experiment"])
        row, seed = (match["row"], int(match["seed"])) if match else (experiment["Experiment"], None)
        entry = rows.setdefault(row, {"seeds": [], **{m: [] for m in metrics}})
        entry["seeds"].append(seed)
        for metric in metrics:
            value = _value(experiment, metric)
            if value is not None:
                entry[metric].append(value)
    return rows


def cell(values: list[float]) -> str:
    """`mean ± sd` over the seeds (sample sd; a lone value stands alone), empty without values."""
    if not values:
        return ""
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}"


def table(rows: dict[str, dict], metrics: tuple[str, ...]) -> str:
    lines = [f"| run | n | {' | '.join(metrics)} |", "|---|---|" + "---|" * len(metrics)]
    for row, entry in rows.items():
        lines.append(f"| {row} | {len(entry['seeds'])} | {' | '.join(cell(entry[m]) for m in metrics)} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    with user_errors():
        parser = ArgumentParser(prog="python -m pipeline.experiments", description=__doc__.splitlines()[0])
        parser.add_argument("--metric", action="append", help="a metric key as `dvc exp show` names it (repeat)")
        parser.add_argument("--rows", nargs="+", help="only these rows, in this order")
        args = parser.parse_args(argv)
        import dvc.api  # here: it takes seconds, and --help should not

        metrics = tuple(args.metric or DEFAULT_METRICS)
        rows = spreads(dvc.api.exp_show(), metrics)
        if args.rows:
            missing = [r for r in args.rows if r not in rows]
            if missing:
                raise UserError(f"no experiments named {', '.join(missing)} (-s<seed> runs) from this commit")
            rows = {r: rows[r] for r in args.rows}
        print(table(rows, metrics))


if __name__ == "__main__":
    main()
