"""A readable summary of a run: one line per stage in DAG order, then the evaluation as a Markdown table.

    python -m pipeline.report [--metrics-dir FOLDER]

Reads the plain metrics files (where dvc.yaml's `paths.metrics` puts them, or by name in a copied folder) and
never calls dvc, so it is fast.
DVC gives the other views:
    dvc metrics show --md metrics/eval.json   every evaluation number (R@5/10, top-5, sizes, seconds) as Markdown
    dvc metrics diff [rev]                    each metric against the last commit (or rev), with the change
    dvc exp show --only-changed               experiments side by side, only the params and metrics that differ
    make plots                                the training curves and the base-vs-trained bars, as an HTML page
                                              that needs no network (`dvc plots show`'s page loads a CDN)
"""
import json
from pathlib import Path

from core.cli import ArgumentParser, UserError, existing_folder, user_errors
from pipeline.caption.filters import STATUSES
from pipeline.paths import pipeline_paths

CAPTION_FAILURES = [status for status in STATUSES if status != "ok"]
EVAL_COLUMNS = {"I2T R@1": "i2t_R@1", "T2I R@1": "t2i_R@1", "top-1": "top1"}
INDENT = " " * 11  # under the text after the stage name


def named_counts(label: str, counts: dict) -> str:
    """`label: a 3, b 1` for the non-zero counts, `label: none` when all are zero."""
    named = ", ".join(f"{name} {n}" for name, n in counts.items() if n)
    return f"{label}: {named or 'none'}"


def drops(metrics: dict) -> dict:
    """The `dropped_<reason>` counts, keyed by reason."""
    return {key.removeprefix("dropped_"): n for key, n in metrics.items() if key.startswith("dropped_")}


def source_line(m: dict) -> str:
    return f"{m['urls']}/{m['rows']} rows kept as urls ({m['kind']})  {named_counts('dropped', drops(m))}"


def download_line(m: dict) -> str:
    return (f"{m['success']}/{m['urls']} images ok  {m['images_per_s']:.1f} img/s  {m['seconds']:.0f} s  "
            f"{named_counts('failures', m['failures'])}")


def caption_counts(m: dict) -> str:
    """`ok/captions captions ok`, with `(K per image)` when there are several; metrics from before K existed have
    one caption per image."""
    per_image = m.get("captions_per_image", 1)
    counts = f"{m['ok']}/{m.get('captions', m['images'])} captions ok"
    return f"{counts} ({per_image} per image)" if per_image > 1 else counts


def caption_line(m: dict) -> str:
    """The counts line, plus a second line with the captioner's accuracy per attribute when scored (toy world)."""
    failures = named_counts("failures", {status: m[status] for status in CAPTION_FAILURES})
    line = (f"{caption_counts(m)}  {m['images_per_s']:.1f} img/s  {m['tokens_per_s']:.0f} tok/s  "
            f"{m['seconds']:.0f} s  {failures}")
    if "quality" not in m:
        return line
    quality = {name: score for name, score in m["quality"].items() if name != "captions"}
    scores = ", ".join(f"{name} {score:.2f}" for name, score in quality.items())
    return f"{line}\n{INDENT}quality ({m['quality']['captions']} captions): {scores}"


def benchmarks_line(m: dict) -> str:
    return f"{m['images']} images of {len(m['images_per_benchmark'])} benchmarks fingerprinted"


def shard_line(m: dict) -> str:
    return (f"{m['train']} train + {m['val']} val of {m['raw_images']} images  "
            f"{m['train_shards']} + {m['val_shards']} shards  {named_counts('dropped', drops(m))}")


def train_line(m: dict) -> str:
    return (f"{m['steps']} steps x {m['samples_per_step']} = {m['samples']} samples  "
            f"{m['samples_per_s']:.1f} samples/s  final loss {m.get('final_loss', float('nan')):.3f}  "
            f"{named_counts('failures', {'skipped_steps': m['skipped_steps']})}")


def evaluate_line(m: dict) -> str:
    models = sorted({model for scores in m.values() for model in scores})
    seconds = sum(entry["seconds"] for scores in m.values() for entry in scores.values())
    return f"{len(m)} benchmarks x {len(models)} models ({', '.join(models)})  {seconds:.1f} s"


def export_line(m: dict) -> str:
    """Each format's size and how far its embeddings are from ours (the stage refuses anything over atol)."""
    formats = [f"{name} not exported ({m[name]['not_exported']})" if "not_exported" in m[name] else
               f"{name} {m[name]['bytes'] / 1e6:.1f} MB max|diff| {m[name]['max_abs_difference']:.0e}"
               for name in m if name not in ("atol", "contents")]
    return f"{', '.join(formats)}  (atol {m['atol']:.0e}); image tower: {m['contents']['image_tower']}"


# stage: (its metrics file's name in dvc.yaml's paths.metrics, its line)
STAGES = {"source": ("source", source_line), "download": ("download", download_line),
          "caption": ("caption", caption_line), "benchmarks": ("benchmarks", benchmarks_line),
          "shard": ("shard", shard_line), "train": ("train", train_line), "evaluate": ("eval", evaluate_line),
          "export": ("export", export_line)}


def eval_table(results: dict) -> list[str]:
    """Markdown rows benchmark x model; a cell stays empty where its metric does not apply."""
    lines = [f"| benchmark | model | {' | '.join(EVAL_COLUMNS)} |", "|---|---|" + "---|" * len(EVAL_COLUMNS)]
    for benchmark, models in results.items():
        for model, scores in models.items():
            cells = [f"{scores[key]:.1f}" if key in scores else "" for key in EVAL_COLUMNS.values()]
            lines.append(f"| {benchmark} | {model} | {' | '.join(cells)} |")
    return lines


def metrics_file(stage: str, metrics_dir: Path | None = None) -> Path:
    """The stage's metrics file: where dvc.yaml puts it, or its file name in ``metrics_dir``."""
    path = Path(pipeline_paths()["metrics"][STAGES[stage][0]])
    return path if metrics_dir is None else Path(metrics_dir) / path.name


def report(metrics_dir: Path | None = None) -> str:
    """The stage lines, then the evaluation table if the evaluate stage has run."""
    lines, results = [], None
    for stage, (_, describe) in STAGES.items():
        path = metrics_file(stage, metrics_dir)
        if not path.is_file():
            lines.append(f"{stage}: not run yet")
            continue
        try:
            metrics = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise UserError(f"{path}: not valid JSON ({exc})") from None
        lines.append(f"{stage:<10} {describe(metrics)}")
        if stage == "evaluate":
            results = metrics
    if results:
        lines += ["", *eval_table(results)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    with user_errors():
        parser = ArgumentParser(prog="python -m pipeline.report", description=__doc__.splitlines()[0])
        parser.add_argument("--metrics-dir", type=existing_folder,
                            help="a folder of metrics files (default: where dvc.yaml puts them)")
        print(report(parser.parse_args(argv).metrics_dir))


if __name__ == "__main__":
    main()
