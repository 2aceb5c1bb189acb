"""img2dataset, driven from params, with exact accounting of every URL.

- Options in params `download` are passed to `img2dataset.download` by name (`extra` takes any other option).
- Every URL is opened through the download guard (pipeline/download/guard.py): other schemes, files outside the
  allowed roots and connections to non-public addresses are refused (class `refused`) unless params open them.
  Repo-relative `file:` URLs (the toy world's) stay so in the records; the guard opens them under `root`.
- Same URLs, same bytes: every finished shard is rewritten in key order without the clock
  (pipeline/download/canonical.py); `.dvcignore` keeps the timings of the stats files out of the folder's hash.
- Resumable: img2dataset's incremental mode skips shards whose stats file exists; a fingerprint of the URL list
  and the options guards that, so a params change starts from an empty folder instead of mixing outputs.
- Speed survives a resume: `runs.jsonl` in the folder records the seconds and successes of every run that
  finished a shard, and `images_per_s` is over those runs (a rerun that skips every shard keeps it). It holds
  timings, not data: `.dvcignore` keeps it out of the folder's hash.
- Accounting comes from img2dataset's per-shard parquet (one row per URL, with status and error message); every
  failure is put in a named class, and the sums must equal the URL count or the stage fails.
- `distributor`: with `multiprocessing` and `ray`, img2dataset's downloader runs one job per shard on the stage's
  job runner (core/jobs.py, through pipeline/download/distributor.py): `processes_count` local processes, where a
  dead worker ends the stage with one line, or Ray tasks on `RAY_ADDRESS` (failing fast when it does not answer) or
  on a local Ray instance of `processes_count` CPUs, stopped afterwards; Ray reruns a task whose worker died, and the
  metrics count the shards each node downloaded. `pyspark` is img2dataset's own distributor.
"""
import contextlib
import hashlib
import inspect
import json
import os
import re
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import pandas as pd

from core.jobs import job_runner
from pipeline.download.canonical import settle_all
from pipeline.download.guard import REFUSED, Policy
from core.outputs import write_bytes
from pipeline.params.download import DownloadParams
from pipeline.params import ParamsError

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # img2dataset's albumentations phones home at import

FINGERPRINT = "fingerprint.txt"  # not *.json: img2dataset reads every *.json in the folder as a finished shard
RUNS = "runs.jsonl"  # the same: one line per run of this fingerprint that downloaded a shard

# (class, pattern on img2dataset's error_message), first match wins; HTTP codes become http_<code>.
FAILURE_CLASSES = [
    ("refused", re.compile(re.escape(REFUSED))),
    ("timeout", re.compile(r"timed out|timeout", re.I)),
    ("connection_refused", re.compile(r"connection refused", re.I)),
    ("connection_reset", re.compile(r"connection reset|remote end closed|broken pipe", re.I)),
    ("dns_error", re.compile(r"name or service not known|nodename nor servname|temporary failure in name", re.I)),
    ("file_not_found", re.compile(r"no such file or directory", re.I)),
    ("ssl_error", re.compile(r"ssl|certificate", re.I)),
    ("image_too_small", re.compile(r"image too small", re.I)),
    ("image_too_large", re.compile(r"image area too large|too large", re.I)),
    ("aspect_ratio", re.compile(r"aspect ratio", re.I)),
    ("decode_error", re.compile(r"decod|cannot identify image|truncated", re.I)),
    ("disallowed_by_header", re.compile(r"x-robots-tag|noai|noimageai", re.I)),
]
HTTP_ERROR = re.compile(r"HTTP Error (\d{3})")


def failure_class(message: str | None) -> str:
    """Name the failure behind one of img2dataset's error messages."""
    message = message or ""
    http = HTTP_ERROR.search(message)
    if http:
        return f"http_{http.group(1)}"
    for name, pattern in FAILURE_CLASSES:
        if pattern.search(message):
            return name
    return "other"


def img2dataset_options(params: DownloadParams) -> dict:
    """The keyword arguments for img2dataset.download; `extra` keys must be real options of it."""
    import img2dataset  # here, not at the top: it pulls in torch (~3 s) and params errors must come first

    accepted = set(inspect.signature(img2dataset.download).parameters)
    options = params.model_dump(exclude={"extra", "allow_networks", "allow_file_roots"})
    reserved = {"url_list", "output_folder", "input_format", "output_format", "url_col", "caption_col",
                "save_additional_columns", "incremental_mode", "enable_wandb"}
    for key in params.extra:
        if key not in accepted:
            raise ParamsError(f"download.extra.{key}: not an img2dataset option")
        if key in reserved or key in options:
            raise ParamsError(f"download.extra.{key}: set by the pipeline or by its own key in `download`")
    return {**options, **params.extra}


def fingerprint(urls_path: Path, options: dict, opened: dict) -> str:
    """Of the URL list, the img2dataset options and what the guard opens (a change can turn refusals into images)."""
    digest = hashlib.sha256(Path(urls_path).read_bytes())
    digest.update(json.dumps(options, sort_keys=True, default=str).encode())
    digest.update(json.dumps(opened, sort_keys=True).encode())
    return digest.hexdigest()


def prepare_output(out_dir: Path, expected: str) -> None:
    """Keep finished shards only if they were made from the same URLs and options."""
    marker = out_dir / FINGERPRINT
    if out_dir.exists() and (not marker.exists() or marker.read_text() != expected):
        shutil.rmtree(out_dir)
    write_bytes(marker, expected.encode())


def finished_shards(out_dir: Path) -> dict[str, int]:
    """Shard stats file -> its successes, for every shard img2dataset finished."""
    return {p.name: json.loads(p.read_text())["successes"] for p in sorted(out_dir.glob("*_stats.json"))}


def record_run(out_dir: Path, before: dict[str, int], seconds: float) -> list[dict]:
    """Append this run to the folder's run history if it finished a shard; returns every recorded run."""
    path = out_dir / RUNS
    runs = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    new = {name: n for name, n in finished_shards(out_dir).items() if name not in before}
    if new:
        runs.append({"seconds": round(seconds, 3), "images": sum(new.values()), "shards": len(new)})
        write_bytes(path, "".join(json.dumps(run, sort_keys=True) + "\n" for run in runs).encode())
    return runs


def summarise(out_dir: Path, url_count: int, seconds: float, runs: list[dict]) -> dict:
    """Sum img2dataset's per-shard records into one accounting; raise if any URL is unaccounted for. Speed is
    over the `runs` that downloaded something, so a resume does not inflate it."""
    shards = sorted(p for p in out_dir.glob("*.parquet"))
    records = pd.concat([pd.read_parquet(p, columns=["status", "error_message"]) for p in shards]) if shards \
        else pd.DataFrame(columns=["status", "error_message"])
    stats = [json.loads(p.read_text()) for p in sorted(out_dir.glob("*_stats.json"))]
    success = int((records["status"] == "success").sum())
    failed = records[records["status"] != "success"]
    failures = Counter(failure_class(m) for m in failed["error_message"])
    worked_s, worked_images = sum(r["seconds"] for r in runs), sum(r["images"] for r in runs)
    summary = {
        "urls": url_count,
        "success": success,
        "failed": len(failed),
        "failed_to_download": int((records["status"] == "failed_to_download").sum()),
        "failed_to_resize": int((records["status"] == "failed_to_resize").sum()),
        "failures": dict(sorted(failures.items())),
        "shards": len(stats),
        "working_runs": len(runs),
        "seconds": round(worked_s, 3),
        "seconds_this_run": round(seconds, 3),
        "images_per_s": round(worked_images / worked_s, 2) if worked_s > 0 else 0.0,
    }
    stats_total = sum(s["count"] for s in stats)
    if not (len(records) == stats_total == url_count and success + sum(failures.values()) == url_count):
        raise RuntimeError(
            f"download accounting does not add up: {url_count} urls, {len(records)} records, "
            f"{stats_total} in stats, {success} success + {sum(failures.values())} failed; "
            f"remove {out_dir} and rerun"
        )
    return summary


def run(params: DownloadParams, urls_path: Path, out_dir: Path, root: Path = Path("."),
        toy_world: Path | None = None) -> dict:
    """Download every URL of urls_path into out_dir (webdataset shards); returns the accounting. Files may be opened
    under `download.allow_file_roots` and `toy_world` (the source stage's images; relative to `root`)."""
    import img2dataset  # see img2dataset_options

    from pipeline.download.worker import guarded_downloads

    options = img2dataset_options(params)
    policy = Policy.from_params(root, params.allow_networks,
                                [*([toy_world] if toy_world else []), *params.allow_file_roots])
    runner = contextlib.nullcontext() if params.distributor == "pyspark" else job_runner(
        "download.distributor", params.distributor, params.processes_count, isolate=True, max_tasks_per_child=5,
        rerun="rerun to resume from the finished shards")
    start = time.perf_counter()  # the Ray start-up timed too, like the Spark session img2dataset starts itself
    with runner as jobs:  # first: without Ray, or with a Ray address that does not answer, nothing is touched
        urls = pd.read_parquet(urls_path)
        prepare_output(out_dir, fingerprint(urls_path, options, {"networks": params.allow_networks,
                                                                 "file_roots": params.allow_file_roots}))
        extra_columns = [c for c in urls.columns if c not in ("url", "alt_text")]
        if params.distributor == "pyspark":
            os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
            os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
        with tempfile.TemporaryDirectory(prefix="fixclip-download-") as tmp, guarded_downloads(policy, jobs):
            url_file = Path(tmp) / "urls.parquet"
            urls.to_parquet(url_file, index=False)
            settle_all(out_dir)  # a shard whose settling was killed
            before = finished_shards(out_dir)
            img2dataset.download(
                url_list=str(url_file),
                input_format="parquet",
                url_col="url",
                caption_col="alt_text",
                save_additional_columns=extra_columns,
                output_format="webdataset",
                output_folder=str(out_dir.resolve()),  # absolute: Ray workers run in their own folder
                incremental_mode="incremental",
                enable_wandb=False,
                **options,
            )
    seconds = time.perf_counter() - start
    summary = summarise(out_dir, len(urls), seconds, record_run(out_dir, before, seconds))
    if params.distributor == "ray":
        summary["ray"] = {"tasks_per_node": dict(sorted(jobs.tasks_per_node.items()))}
    return summary
