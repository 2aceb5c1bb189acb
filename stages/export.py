"""DVC stage `export`: `export.model` -> --out/open_clip + --out/transformers + --metrics.

Each folder also gets README.md, a model card generated from the run's params and metrics (fixclip/export/model_card).

Each export is loaded back by its own library and must embed probe images and texts (up to 248 tokens) like our
model within `export.atol`, or the stage fails and writes nothing for it. A model the format cannot express (e.g.
Holistic CLIP's multi-branch image tower) is not exported: its folder holds only NOT_EXPORTED.txt with the reason,
which metrics/export.json repeats, and the other methods' pipeline runs on.

A model with regional prompts is exported without them (fixclip/export): each folder's config and
--metrics say so under `contents`, with the R@1 / top-1 of both forms from --eval-metrics (evaluate's) when the
evaluate stage scored this very model folder.
"""
import json
import shutil
from dataclasses import replace
import time
from pathlib import Path

from fixclip.export.folded import NotExpressible
from fixclip.export.hf_folder import export_transformers
from fixclip.export.model_card import RunFacts, model_card
from fixclip.export.openclip_folder import export_open_clip
from fixclip.methods import method_of
from fixclip.model_folder import MODEL_CONFIG, WITHOUT_PROMPTS, load_model_folder
from core.outputs import write_bytes, write_json
from pipeline.params import PARAMS_FILE, Params, ParamsError, exit_on_params_error, load_params
from pipeline.params.export import ExportParams
from pipeline.stage_args import stage_paths

FORMS = {"with_prompts": "trained", "without_prompts": WITHOUT_PROMPTS}  # contents' names: evaluate's rows
NOT_EXPORTED = "NOT_EXPORTED.txt"
CARD = "README.md"
# The training params a model card lists (the method's own section is read from the model folder).
CARD_TRAIN_KEYS = ("method", "batch_size", "grad_accum", "epochs", "samples", "lr", "weight_decay", "warmup_steps",
                   "new_params_lr_scale", "caption_pool", "precision", "seed")
EXPORTERS = {"open_clip": export_open_clip, "transformers": export_transformers}


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def scores(results: dict, row: str) -> dict:
    """{benchmark: R@1 image->text / text->image, or top-1} of one evaluate row."""
    picked = {}
    for benchmark, per_model in results.items():
        metrics = per_model[row]
        picked[benchmark] = (metrics["top1"] if "top1" in metrics
                             else [metrics["i2t_R@1"], metrics["t2i_R@1"]])
    return picked


def contents(model, results: dict | None) -> dict:
    """What the exports hold of ``model``; with ``results`` (evaluate's metrics of this model folder), the scores of
    the model with its prompts (fixclip.load) and without them (the exports)."""
    if model.prompts is None:
        return {"image_tower": "as trained (no regional prompts)"}
    held = {"image_tower": "backbone without the regional prompts (fixclip.load keeps them; docs/export.md)"}
    if results is not None and all(WITHOUT_PROMPTS in per_model for per_model in results.values()):
        held["scores"] = {form: scores(results, row) for form, row in FORMS.items()}
    return held


def run_facts(params: Params) -> RunFacts:
    """What the model card says of how the run made its model (scores and method are added by ``run``)."""
    source = params.source
    if source.kind == "toyworld":
        world = source.toyworld
        dataset = "toyworld"
        data = (f"the toy world: {world.num_images} synthetic {world.image_size} px images of {world.min_objects}-"
                f"{world.max_objects} shapes on a {world.grid} x {world.grid} grid (seed {world.seed})")
    else:
        dataset, data = source.url_list.path, f"the URL list {source.url_list.path}, downloaded with img2dataset"
    train = params.train.model_dump()
    return RunFacts(method=params.train.method, method_params={}, train={k: train[k] for k in CARD_TRAIN_KEYS},
                    base_model=str(params.train.base_model.config), dataset=dataset, data=data,
                    captioner=params.caption.model)


def _facts_of(model, held: dict, results: dict | None, facts: RunFacts) -> RunFacts:
    method = method_of(model)
    measured = {row: scores(results, row) for row in ("base", "trained", WITHOUT_PROMPTS)
                if all(row in per_model for per_model in results.values())} if results is not None else {}
    return replace(facts, method_params=method["params"] if method else model.cfg.model_dump(), scores=measured,
                   image_tower=held["image_tower"],
                   exported_row="trained" if model.prompts is None else WITHOUT_PROMPTS)


def run(params: ExportParams, out: Path, metrics_path: Path, eval_metrics: Path | None = None,
        facts: RunFacts | None = None) -> dict:
    """Export ``params.model`` into ``out``; ``eval_metrics``: evaluate's scores, when it scored this model folder."""
    config = Path(params.model) / MODEL_CONFIG
    if not config.is_file():
        raise ParamsError.invalid(PARAMS_FILE, [f"export.model: no {MODEL_CONFIG} in {params.model!r} (not a model "
                                                "folder written by the train stage)"])
    model = load_model_folder(params.model)
    results = json.loads(eval_metrics.read_text()) if eval_metrics is not None and eval_metrics.is_file() else None
    held = contents(model, results)
    if facts is not None:
        facts = _facts_of(model, held, results, facts)
    metrics = {"atol": params.atol, "contents": held}
    for name, export in EXPORTERS.items():
        start = time.perf_counter()
        try:
            difference = export(model, config, out / name, params.atol, held)
        except NotExpressible as exc:
            shutil.rmtree(out / name, ignore_errors=True)
            write_bytes(out / name / NOT_EXPORTED, f"{exc}\n".encode())
            metrics[name] = {"not_exported": str(exc)}
            print(f"export: {name}: not exported: {exc}")
            continue
        if facts is not None:
            write_bytes(out / name / CARD, model_card(name, str(out / name), facts).encode())
        metrics[name] = {"max_abs_difference": difference, "bytes": folder_bytes(out / name),
                         "seconds": round(time.perf_counter() - start, 3)}
        print(f"export: {out / name}: max |difference| {difference:.1e} (atol {params.atol:.0e})")
    write_json(metrics_path, metrics)
    return metrics


def main() -> None:
    args = stage_paths("export", "eval_metrics", "out", "metrics")
    params = load_params()
    evaluated = params.evaluate.trained_model is not None and (
        Path(params.evaluate.trained_model).resolve() == Path(params.export.model).resolve())
    run(params.export, args.out, args.metrics, args.eval_metrics if evaluated else None, run_facts(params))


if __name__ == "__main__":
    with exit_on_params_error():
        main()
