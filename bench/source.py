"""Source stage (`url_list` normalise) vs a bare pandas read + parquet write of the same list, side by side.

    python bench/source.py [--rows 1000000] [--scale-rows 3000000] [--measure-target]

Generates a URL list (one row in ten repeats a URL, one URL in a thousand is invalid; columns url, caption,
license) as csv and parquet, then runs, each in a fresh child process, the stage's library call (read, strip,
validate, dedupe, hash, write data/urls.parquet) and an anchor that only reads the file with pandas and writes it
with pyarrow.parquet. Prints rows/s (wall time of the work, imports excluded; on a shared machine compare the cpu
seconds too) and each child's peak RSS. Then gives the stage's peak memory at 30M rows (goal < 2 GiB), linearly
extrapolated through the csv runs at --rows and --scale-rows, and with --measure-target also measured on a 30M-row
csv (a few minutes, 4 GB of disk). The extrapolation is rough: at small sizes fixed buffers (the csv reader's
read-ahead, a parquet row group) fill up and the write pass peaks, at 30M the dedup arrays do. The last line is
one JSON object with the csv figures at --rows and the 30M peak (measured if it was).
"""
import argparse
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.report import emit  # noqa: E402

TARGET_ROWS = 30_000_000
CHUNK_ROWS = 1_000_000


class Run(NamedTuple):
    seconds: float  # of the work, imports excluded
    cpu_seconds: float  # user + system of the whole process
    peak_mib: float  # peak RSS of the process (its own: see peak_rss_mib)


def list_chunks(rows: int, seed: int = 0) -> Iterator[pa.Table]:
    """The list in chunks: one row in ten repeats the URL of a random row, one URL in a thousand is invalid."""
    rng = np.random.default_rng(seed)
    for start in range(0, rows, CHUNK_ROWS):
        ids = np.arange(start, min(start + CHUNK_ROWS, rows))
        repeats = rng.random(len(ids)) < 0.1
        ids[repeats] = rng.integers(0, rows, size=int(repeats.sum()))
        names = pa.array(ids).cast(pa.string())
        urls = pc.binary_join_element_wise("https://images.example.org/photos/", names, "/picture-", names, ".jpg",
                                           "")
        invalid = pc.binary_join_element_wise("not a url ", names, "")
        urls = pc.if_else(pa.array(rng.random(len(ids)) < 0.001), invalid, urls)
        captions = pc.binary_join_element_wise("a photo of item ", names, ", seen from the side", "")
        yield pa.table({"url": urls, "caption": captions, "license": pa.repeat("cc-by-4.0", len(ids))})


def write_list(rows: int, work: Path, formats: list[str]) -> dict[str, Path]:
    """The list written once per format, chunk by chunk; {format: path}."""
    paths = {fmt: work / f"urls-{rows}.{fmt}" for fmt in formats}
    for fmt, path in paths.items():
        chunks = list_chunks(rows)
        first = next(chunks)
        writer_class = pacsv.CSVWriter if fmt == "csv" else pq.ParquetWriter
        with writer_class(str(path), first.schema) as writer:
            for chunk in itertools.chain([first], chunks):
                writer.write_table(chunk)
    return paths


def run_child(kind: str, path: Path, out: Path) -> Run:
    """Run one measurement in a fresh process, so that the generator's memory does not count."""
    command = [sys.executable, __file__, "--child", kind, "--input", str(path), "--output", str(out)]
    child = subprocess.Popen(command, stdout=subprocess.PIPE, env={**os.environ, "TQDM_DISABLE": "1"})
    stdout = child.stdout.read()
    _, status, usage = os.wait4(child.pid, 0)  # this child's own cpu times
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode:
        raise SystemExit(f"bench child {kind} on {path} failed ({child.returncode})")
    reported = json.loads(stdout)
    return Run(reported["seconds"], usage.ru_utime + usage.ru_stime, reported["peak_mib"])


def peak_rss_mib() -> float:
    """This process's peak RSS since it started (VmHWM). Not ru_maxrss: Linux starts a spawned child's ru_maxrss
    at its parent's peak, here the generator's."""
    status = Path("/proc/self/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("VmHWM:")).split()[1]) / 1024


def child_main(kind: str, path: Path, out: Path) -> None:
    """The measured work: `ours` is the stage's normalise, `anchor` a bare pandas read and pyarrow write."""
    import pandas as pd

    from pipeline.params.source import UrlListParams
    from pipeline.source.url_list import normalise

    start = time.perf_counter()
    if kind == "ours":
        normalise(UrlListParams(path=str(path), keep_cols=["license"]), out)
    else:
        frame = pd.read_csv(path) if path.suffix == ".csv" else pd.read_parquet(path)
        pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), out)
    print(json.dumps({"seconds": time.perf_counter() - start, "peak_mib": peak_rss_mib()}))


def measure(rows: int, work: Path, formats: list[str], kinds: list[str]) -> dict[str, dict[str, Run]]:
    """Each kind of run on the list in each format, printed as they come; {format: {kind: Run}}."""
    results = {}
    for fmt, path in write_list(rows, work, formats).items():
        results[fmt] = {}
        for kind in kinds:
            run = results[fmt][kind] = run_child(kind, path, work / f"out-{kind}.parquet")
            print(f"{rows:>10,} rows {fmt:<7} {kind:<6}: {rows / run.seconds:>9,.0f} rows/s  ({run.seconds:6.1f} s, "
                  f"cpu {run.cpu_seconds:6.1f} s)  peak {run.peak_mib:6.0f} MiB", flush=True)
        path.unlink()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--scale-rows", type=int, default=3_000_000)
    parser.add_argument("--measure-target", action="store_true", help=f"also run the stage on {TARGET_ROWS:,} rows")
    parser.add_argument("--child", choices=["ours", "anchor"], help=argparse.SUPPRESS)
    parser.add_argument("--input", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--output", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child_main(args.child, args.input, args.output)
    with tempfile.TemporaryDirectory(prefix="bench-source-") as tmp:
        work = Path(tmp)
        base = measure(args.rows, work, ["csv", "parquet"], ["ours", "anchor"])
        scaled = measure(args.scale_rows, work, ["csv"], ["ours"])
        target = measure(TARGET_ROWS, work, ["csv"], ["ours"])["csv"]["ours"] if args.measure_target else None
    ours, anchor = base["csv"]["ours"], base["csv"]["anchor"]
    per_row = (scaled["csv"]["ours"].peak_mib - ours.peak_mib) / (args.scale_rows - args.rows)
    extrapolated = ours.peak_mib + per_row * (TARGET_ROWS - args.rows)
    print(f"stage peak at {TARGET_ROWS:,} rows, csv (goal < 2048 MiB): "
          + (f"measured {target.peak_mib:,.0f} MiB; " if target else "")
          + f"linear through the {args.rows:,} and {args.scale_rows:,} runs ({per_row * 2**20:.0f} bytes/row): "
          f"~{extrapolated:,.0f} MiB")
    peak_30m = target.peak_mib if target else extrapolated
    emit("source", [
        {"name": f"source {args.rows:,} rows csv", "ours": args.rows / ours.seconds,
         "anchor": args.rows / anchor.seconds, "anchor_name": "pandas read_csv + parquet write", "unit": "rows/s",
         "goal": ">= 1.0"},
        {"name": f"source peak memory at {TARGET_ROWS:,} rows ({'measured' if target else 'extrapolated'})",
         "ours": peak_30m, "anchor": 2048.0, "anchor_name": "2 GiB budget", "unit": "MiB", "goal": "<= 1.0"},
    ])


if __name__ == "__main__":
    main()
