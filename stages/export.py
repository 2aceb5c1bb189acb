"""DVC stage `export`: models/fixclip -> models/export/open_clip + models/export/transformers + metrics/export.json.

Each export is loaded back by its own library and must embed probe images and texts (up to 248 tokens) like our
model within `export.atol`, or the stage fails and writes nothing for it. A model the format cannot express (e.g.
Holistic CLIP's multi-branch image tower) is not exported: its folder holds only NOT_EXPORTED.txt with the reason,
which metrics/export.json repeats, and the other methods' pipeline runs on.
"""
import shutil
import time
from pathlib import Path

from fixclip.export.folded import NotExpressible
from fixclip.export.hf_folder import export_transformers
from fixclip.export.openclip_folder import export_open_clip
from fixclip.model_folder import MODEL_CONFIG, load_model_folder
from pipeline.outputs import write_bytes, write_json
from pipeline.params import PARAMS_FILE, ParamsError, exit_on_params_error, load_params
from pipeline.params.export import ExportParams

OUT = Path("models/export")
METRICS = Path("metrics/export.json")
NOT_EXPORTED = "NOT_EXPORTED.txt"
EXPORTERS = {"open_clip": export_open_clip, "transformers": export_transformers}


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def run(params: ExportParams, out: Path = OUT, metrics_path: Path = METRICS) -> dict:
    config = Path(params.model) / MODEL_CONFIG
    if not config.is_file():
        raise ParamsError.invalid(PARAMS_FILE, [f"export.model: no {MODEL_CONFIG} in {params.model!r} (not a model "
                                                "folder written by the train stage)"])
    model = load_model_folder(params.model)
    metrics = {"atol": params.atol}
    for name, export in EXPORTERS.items():
        start = time.perf_counter()
        try:
            difference = export(model, config, out / name, params.atol)
        except NotExpressible as exc:
            shutil.rmtree(out / name, ignore_errors=True)
            write_bytes(out / name / NOT_EXPORTED, f"{exc}\n".encode())
            metrics[name] = {"not_exported": str(exc)}
            print(f"export: {name}: not exported: {exc}")
            continue
        metrics[name] = {"max_abs_difference": difference, "bytes": folder_bytes(out / name),
                         "seconds": round(time.perf_counter() - start, 3)}
        print(f"export: {out / name}: max |difference| {difference:.1e} (atol {params.atol:.0e})")
    write_json(metrics_path, metrics)
    return metrics


def main() -> None:
    run(load_params().export)


if __name__ == "__main__":
    with exit_on_params_error():
        main()
