"""Download stage vs the bare img2dataset CLI on the same URL list, side by side in one run.

    python bench/download.py [--images 2000] [--repeats 3]

Both run as fresh processes with the same options (taken from params.yaml's `download` section) on the same toy-world
file URLs; runs alternate and the medians are compared. Goal: stage / CLI >= 0.95.
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.report import emit  # noqa: E402
from pipeline.toyworld import scenes  # noqa: E402
from pipeline.download.run import resolve_file_urls  # noqa: E402
from pipeline.params import load_params  # noqa: E402
from pipeline.paths import pipeline_paths, stage_command  # noqa: E402


def cli_command(params, urls: Path, out: Path) -> list[str]:
    bin_dir = Path(sys.executable).parent
    options = params.model_dump(exclude={"extra"})
    args = [str(bin_dir / "img2dataset"), "--url_list", str(urls), "--input_format", "parquet",
            "--url_col", "url", "--caption_col", "alt_text",
            "--save_additional_columns", "['uid','long_description','scene']",
            "--output_format", "webdataset", "--output_folder", str(out), "--enable_wandb", "False"]
    for key, value in options.items():
        args += [f"--{key}", str(value)]
    return args


def timed(cmd: list[str], cwd: Path, env: dict, out: Path) -> tuple[float, int]:
    """Wall seconds of the command and the images it wrote (from img2dataset's per-shard stats)."""
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    seconds = time.perf_counter() - start
    return seconds, sum(json.loads(p.read_text())["successes"] for p in out.glob("*_stats.json"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=4)
    args = parser.parse_args()

    params = load_params(REPO / "params.yaml")
    world = params.source.toyworld.model_copy(update={"num_images": args.images})
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", "PYTHONPATH": str(REPO),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    with tempfile.TemporaryDirectory(prefix="bench-download-") as tmp:
        work = Path(tmp)
        paths = pipeline_paths()
        urls = scenes.generate(world, work / paths["toyworld"])
        (work / paths["urls"]).parent.mkdir(parents=True, exist_ok=True)
        urls.to_parquet(work / paths["urls"], index=False)
        absolute = urls.assign(url=resolve_file_urls(urls["url"], work))
        absolute.to_parquet(work / "urls_absolute.parquet", index=False)
        (work / "params.yaml").write_text((REPO / "params.yaml").read_text())

        runs = {
            "stage": (stage_command("download"), work / paths["raw"]),
            "cli": (cli_command(params.download, work / "urls_absolute.parquet", work / "cli_out"), work / "cli_out"),
        }
        seconds = {"stage": [], "cli": []}
        for repeat in range(args.repeats):
            # Alternate who goes first: the first run of a pair also warms the page cache for the second.
            for name in (("stage", "cli") if repeat % 2 == 0 else ("cli", "stage")):
                command, out = runs[name]
                took, images = timed(command, work, env, out)
                if images != args.images:
                    sys.exit(f"not comparable: {name} wrote {images} of {args.images} images")
                seconds[name].append(took)
        stage_s, cli_s = seconds["stage"], seconds["cli"]

    stage_rate = args.images / statistics.median(stage_s)
    cli_rate = args.images / statistics.median(cli_s)
    print(f"images: {args.images}, repeats: {args.repeats}, options: {params.download.model_dump()}")
    print(f"download stage : {stage_rate:8.1f} images/s  (runs: {', '.join(f'{s:.1f}s' for s in stage_s)})")
    print(f"img2dataset CLI: {cli_rate:8.1f} images/s  (runs: {', '.join(f'{s:.1f}s' for s in cli_s)})")
    print(f"ratio stage/CLI: {stage_rate / cli_rate:.3f}  (goal >= 0.95)")
    emit("download", [{"name": "download stage vs img2dataset CLI", "ours": stage_rate, "anchor": cli_rate,
                       "anchor_name": "bare img2dataset CLI", "unit": "images/s", "goal": ">= 0.95"}])


if __name__ == "__main__":
    main()
