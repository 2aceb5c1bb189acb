"""The long-text vs short-text trade-off of a sweep of DVC experiments, as a PNG and a Markdown table of its points.

    python -m pipeline.frontier [--out docs/frontier.png] [--split test|dev] [--prefix frontier]

Reads the experiments (as `python -m pipeline.experiments` does) named `<prefix>-<method>-lr<rate>-<budget>-s<seed>`,
e.g. frontier-fixclip-lr0.001-e3-s0 (a method may hold hyphens; the rate is a number such as 0.001 or 1e-4; the
budget holds no hyphen). One point per method, rate and budget, the mean over its seeds: long-text R@1 (the mean of
toy_long's I2T and T2I) against zero-shot top-1 (toy_zeroshot) in one panel and against alt-text R@1 (the mean of
toy_short's I2T and T2I) in the other. Every point is drawn; a line joins each method's front in that panel (the
points no other point of the method beats on both axes), in order of x, so one method lies above another where its
line does. The base model (the `.base.` values, mean over the runs) is one marked point. `--split dev` reads
metrics/eval_dev.json.
"""
import re
import statistics
from pathlib import Path

import vl_convert

from core.cli import ArgumentParser, UserError, user_errors
from pipeline.experiments import SPLIT_HELP, SPLITS, row_and_seed, spreads

AXES = {"zero-shot": ("toy_zeroshot.{}.top1",), "long-text": ("toy_long.{}.i2t_R@1", "toy_long.{}.t2i_R@1"),
        "alt-text": ("toy_short.{}.i2t_R@1", "toy_short.{}.t2i_R@1")}
TITLES = {"zero-shot": "zero-shot top-1 %", "long-text": "long-text R@1 % (mean of I2T, T2I)",
          "alt-text": "alt-text R@1 % (mean of I2T, T2I)"}
METRICS = tuple(key.format(model) for keys in AXES.values() for key in keys for model in ("trained", "base"))


def name_pattern(prefix: str) -> re.Pattern:
    """A sweep's row names (run names less `-s<seed>`): `<prefix>-<method>-lr<rate>-<budget>`."""
    return re.compile(rf"^{re.escape(prefix)}-(?P<method>.+)-lr(?P<lr>\d[\d.]*(?:e[+-]?\d+)?)-(?P<budget>[^-]+)$")


def _in_sweep(name: str | None, pattern: re.Pattern) -> bool:
    row, seed = row_and_seed(name or "")
    return seed is not None and pattern.match(row) is not None


def _axes(what: str, entries: list[dict], model: str) -> dict[str, float]:
    """Each axis's value: the mean over its metrics of each one's mean over the entries' seeds."""
    values = {}
    for axis, keys in AXES.items():
        means = []
        for key in (k.format(model) for k in keys):
            seeds = [v for entry in entries for v in entry[key].values()]
            if not seeds:
                raise UserError(f"{what}: no {key} in its experiments' metrics")
            means.append(statistics.mean(seeds))
        values[axis] = statistics.mean(means)
    return values


def points(rows: dict[str, dict], pattern: re.Pattern) -> tuple[list[dict], dict]:
    """One point per row (method, lr, budget; by method in order of first run, then lr) and the base model's."""
    found = [{**pattern.match(row).groupdict(), "n": len(entry["seeds"]), **_axes(row, [entry], "trained")}
             for row, entry in rows.items()]
    methods = list(dict.fromkeys(p["method"] for p in found))
    found.sort(key=lambda p: (methods.index(p["method"]), float(p["lr"])))
    base = {"method": "base", "lr": "", "budget": "", "n": sum(len(e["seeds"]) for e in rows.values()),
            **_axes("base model", list(rows.values()), "base")}
    return found, base


def on_front(point: dict, others: list[dict], x_axis: str) -> bool:
    """Whether no other point of the same method is at least as good on x and on long text, and better on one."""
    def beats(other: dict) -> bool:
        at_least = other[x_axis] >= point[x_axis] and other["long-text"] >= point["long-text"]
        return at_least and (other[x_axis] > point[x_axis] or other["long-text"] > point["long-text"])
    return not any(beats(o) for o in others if o is not point and o["method"] == point["method"])


def fronts(point: dict, found: list[dict]) -> str:
    """The panels (x axes) on whose front the point lies, comma-separated."""
    return ", ".join(axis for axis in ("zero-shot", "alt-text") if on_front(point, found, axis))


def spec(found: list[dict], base: dict, split: str) -> dict:
    """Two Vega-Lite panels, long-text R@1 against zero-shot and against alt-text, data inline."""
    data = [{**p, "label": f"lr{p['lr']} {p['budget']}"} for p in found]
    y = {"field": "long-text", "type": "quantitative", "title": TITLES["long-text"], "scale": {"zero": False}}
    colour = {"field": "method", "type": "nominal"}

    def panel(x_axis: str) -> dict:
        x = {"field": x_axis, "type": "quantitative", "title": TITLES[x_axis], "scale": {"zero": False}}
        front = [p for p in data if on_front(p, data, x_axis)]
        return {"width": 360, "height": 300, "layer": [
            {"data": {"values": front}, "mark": {"type": "line"},
             "encoding": {"x": x, "y": y, "color": colour, "order": {"field": x_axis, "type": "quantitative"}}},
            {"data": {"values": data}, "mark": {"type": "point", "filled": True},
             "encoding": {"x": x, "y": y, "color": colour}},
            {"data": {"values": data}, "mark": {"type": "text", "align": "left", "dx": 5, "dy": -6, "fontSize": 9},
             "encoding": {"x": x, "y": y, "color": colour, "text": {"field": "label"}}},
            {"data": {"values": [base]}, "mark": {"type": "point", "shape": "diamond", "filled": True, "size": 120,
                                                  "color": "black"}, "encoding": {"x": x, "y": y}},
            {"data": {"values": [base]}, "mark": {"type": "text", "align": "left", "dx": 7, "dy": -8, "text": "base"},
             "encoding": {"x": x, "y": y}}]}

    return {"title": f"Long-text vs short-text trade-off ({split} split)", "hconcat": [panel("zero-shot"),
                                                                                      panel("alt-text")]}


def table(found: list[dict], base: dict, split: str) -> str:
    lines = [f"| method ({split} split) | lr | budget | n | zero-shot | long-text | alt-text | on the front of |",
             "|---" * 8 + "|"]
    for p in [base, *found]:
        lines.append(f"| {p['method']} | {p['lr']} | {p['budget']} | {p['n']} | {p['zero-shot']:.1f} | "
                     f"{p['long-text']:.1f} | {p['alt-text']:.1f} | {fronts(p, found) if p is not base else ''} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    with user_errors():
        parser = ArgumentParser(prog="python -m pipeline.frontier", description=__doc__.split("\n\n")[0])
        parser.add_argument("--out", type=Path, default=Path("docs/frontier.png"), help="the PNG to write")
        parser.add_argument("--split", choices=SPLITS, default="test", help=SPLIT_HELP)
        parser.add_argument("--prefix", default="frontier", help="the sweep's run names start <prefix>-")
        args = parser.parse_args(argv)
        import dvc.api  # here: it takes seconds, and --help should not

        pattern = name_pattern(args.prefix)
        sweep = [e for e in dvc.api.exp_show() if _in_sweep(e.get("Experiment"), pattern)]
        if not sweep:
            raise UserError(f"no experiments named {args.prefix}-<method>-lr<rate>-<budget>-s<seed> from this commit")
        found, base = points(spreads(sweep, METRICS, args.split), pattern)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_bytes(vl_convert.vegalite_to_png(spec(found, base, args.split), scale=2))
        print(table(found, base, args.split))


if __name__ == "__main__":
    main()
