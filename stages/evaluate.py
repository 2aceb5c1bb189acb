"""DVC stage `evaluate`: base and trained model on the benchmarks in params -> --metrics + bar-plot data.

Reads the toy benchmark the benchmarks stage wrote (--toy-benchmark, the test split). Writes --metrics
({benchmark: {model: metrics}}), --dev-metrics (the toy benchmarks on the development split, --toy-benchmark-dev,
as {"dev": {benchmark: {model: metrics}}}: set-up choices are read there, docs/evaluation.md),
--plots/<model>.csv (task, score: I2T / T2I R@1 and top-1 per benchmark, one file per model so a bar plot shows
base and trained side by side) and --results: the trained model's (else the base model's) R@1 and top-1 alone,
{benchmark: {i2t, t2i} or {top1}}, so that `dvc exp show` and `dvc metrics diff` lead with results
(docs/pipeline.md, "Reading a run"). Every `evaluate.extra_models` path must be under --extra-models (a dep).
"""
import csv
import time
from pathlib import Path

import torch

from fixclip.eval.encode import CachedEncoder
from fixclip.eval.run import evaluate_all, headline, plot_rows
from fixclip.model_folder import WITHOUT_PROMPTS, load_base, load_model_folder
from fixclip.train.distributed import pick_device
from pipeline.benchmarks import DEV, dev_entries, load_benchmark
from core.outputs import write_json
from pipeline.params import PARAMS_FILE, ParamsError, exit_on_params_error, load_params
from pipeline.params.evaluate import EvaluateParams
from pipeline.params.train import BaseModelParams
from pipeline.stage_args import stage_paths


def eval_device(preference: str) -> torch.device:
    """The device of `evaluate.device`; asking for CUDA where there is none fails before any work."""
    try:
        return pick_device(preference)
    except ValueError as exc:  # names the key as "device: ..."
        raise ParamsError(f"evaluate.{exc}") from None


def load_models(params: EvaluateParams, base: BaseModelParams, device: torch.device) -> dict:
    """base, trained (unless null) and every extra model, each as `fixclip.load` reads it; a trained model with
    regional prompts also as `trained_without_prompts` (its backbone alone: what the exports hold)."""
    models = {"base": load_base(base.config, base.weights)}
    if params.trained_model is not None:
        models["trained"] = load_model_folder(params.trained_model, base.config)
        if models["trained"].prompts is not None:
            models[WITHOUT_PROMPTS] = load_model_folder(params.trained_model, base.config, prompts=False)
    for extra in params.extra_models:
        models[extra.name] = load_model_folder(extra.path)
    return {name: model.to(device) for name, model in models.items()}


def write_plots(results: dict, models: list[str], plots_dir: Path) -> None:
    plots_dir.mkdir(parents=True, exist_ok=True)
    for model in models:
        with open(plots_dir / f"{model}.csv", "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=["task", "score"])
            writer.writeheader()
            writer.writerows({"task": r["task"], "score": round(r["score"], 4)} for r in plot_rows(results, model))


def results_of(results: dict) -> dict:
    """The headline scores of the trained model (the base model when none is evaluated), rounded as reported."""
    model = "trained" if all("trained" in per_model for per_model in results.values()) else "base"
    return {benchmark: {key: round(score, 1) for key, score in headline(per_model[model]).items()}
            for benchmark, per_model in results.items()}


def check_extra_models(params: EvaluateParams, folder: Path) -> None:
    """Every extra model lies under ``folder``, the one DVC tracks as a dep of this stage (else a change to it
    would not rerun evaluate)."""
    outside = [f"evaluate.extra_models.{i}.path: {extra.path!r} is not under {folder.as_posix()}/ (the folder DVC "
               "tracks as a dep of evaluate; copy or link the checkpoint there)"
               for i, extra in enumerate(params.extra_models) if folder not in Path(extra.path).parents]
    if outside:
        raise ParamsError.invalid(PARAMS_FILE, outside)


def run(params: EvaluateParams, base: BaseModelParams, *, toy_dir: Path, dev_toy_dir: Path, metrics_path: Path,
        dev_metrics_path: Path, results_path: Path, plots_dir: Path) -> dict:
    """Evaluate every model on every benchmark (and the toy ones on the development split), write metrics and
    plots; returns the test split's results."""
    device = eval_device(params.device)
    if params.threads:
        torch.set_num_threads(params.threads)
    start = time.perf_counter()
    models = load_models(params, base, device)
    encoders = [CachedEncoder(model, name, params.batch_size, params.workers) for name, model in models.items()]
    results = evaluate_all(encoders, {entry.name: load_benchmark(entry, toy_dir) for entry in params.benchmarks})
    dev = evaluate_all(encoders, {entry.name: load_benchmark(entry, dev_toy_dir)
                                  for entry in dev_entries(params.benchmarks)})
    write_json(metrics_path, results)
    write_json(results_path, results_of(results))
    write_json(dev_metrics_path, {DEV: dev})
    write_plots(results, list(models), plots_dir)
    print(f"evaluate: {len(results)} benchmarks x {len(models)} models on {device} in "
          f"{time.perf_counter() - start:.1f} s")
    return results


def main() -> None:
    args = stage_paths("evaluate", "toy_benchmark", "toy_benchmark_dev", "extra_models", "plots", "metrics",
                       "dev_metrics", "results")
    params = load_params()
    check_extra_models(params.evaluate, args.extra_models)
    run(params.evaluate, params.train.base_model, toy_dir=args.toy_benchmark, dev_toy_dir=args.toy_benchmark_dev,
        metrics_path=args.metrics, dev_metrics_path=args.dev_metrics, results_path=args.results, plots_dir=args.plots)


if __name__ == "__main__":
    with exit_on_params_error():
        main()
