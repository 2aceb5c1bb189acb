"""Run every bench script with warm-up and repeats, print one table, and write bench/results.json.

    python -m bench [--only shard,train] [--quick] [--skip-full-repro]        (or: make bench BENCH_ARGS="...")
    python -m bench --only caption --sweep     (caption images/s over concurrency x max_num_seqs, to tune a GPU)

Each script runs as a subprocess of the project's python (.venv) in a fixed order with fixed arguments; its output
streams to the terminal and its last JSON line (bench/report.py) gives the rows. Then `dvc repro` is timed twice:
with nothing to do in this workspace (only when `dvc status` is clean: otherwise it is skipped, or measured in the
clone below once that is up to date), and from scratch in a temporary git clone of HEAD with the venvs symlinked and
an empty DVC cache (committed work only). Table: ratio = ours / anchor, and `met` says whether the ratio
(or, for the dvc rows, the time itself) meets the goal. A failed script is a failed row and makes the exit status 1;
a missed goal is a finding, not a failure. bench/results.json holds one flat entry per row plus the machine
(`dvc metrics diff <rev> --targets bench/results.json`); with --only, the other benches' entries are kept.
"""
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # bench.report, when run from elsewhere

from bench.report import check_row, meets  # noqa: E402
from core.cli import ArgumentParser, UserError, user_errors  # noqa: E402

VENV_BIN = REPO / ".venv/bin"
METRICS = REPO / "bench/results.json"
# Table order, with (full, --quick) arguments. Each script does its own warm-up (or alternating runs) and repeats.
SCRIPTS = {
    "source": (["--rows", "1000000", "--scale-rows", "3000000"], ["--rows", "100000", "--scale-rows", "300000"]),
    "download": (["--images", "2000", "--repeats", "4"], ["--images", "200", "--repeats", "2"]),
    "caption": (["--images", "128", "--repeats", "6"], ["--images", "32", "--repeats", "2"]),
    "shard": (["--images", "5000", "--repeats", "5", "--sizes", "64,256"], ["--images", "500", "--repeats", "2"]),
    "train": (["--steps", "40", "--warmup", "5", "--rounds", "3"], ["--steps", "12", "--warmup", "4", "--rounds", "1"]),
    "model": (["--runs", "7", "--steps", "5", "--arch", "tiny,ViT-B-16"], ["--runs", "3", "--steps", "2"]),
    "evaluate": (["--images", "500", "--repeats", "3"], ["--images", "100", "--repeats", "2"]),
}
NOOP, FULL = "repro-noop", "repro-full"
NOOP_GOAL_S, FULL_GOAL_MIN = "<= 5", "<= 15"  # no-op repro, first full demo repro on 2 cores (docs/development.md)


@dataclass
class Row:
    """One table line: a measured comparison, a dvc timing (anchor None: the goal is on `ours`), a failure or a skip."""

    bench: str
    name: str
    ours: float | None = None
    anchor: float | None = None
    anchor_name: str = ""
    unit: str = ""
    goal: str = ""
    ok: bool = True
    failure: str = ""
    skipped: str = ""

    @property
    def ratio(self) -> float | None:
        return self.ours / self.anchor if self.ours is not None and self.anchor else None

    @property
    def met(self) -> bool | None:
        """None when skipped or information only (no goal); False for a failure or a failed correctness check; else
        the goal on ratio or time."""
        if self.skipped or (not self.goal and not self.failure and self.ok):
            return None
        if self.failure or not self.ok:
            return False
        value = self.ratio if self.anchor is not None else self.ours
        return value is not None and meets(value, self.goal)

    def verdict(self) -> str:
        if self.skipped:
            return "skipped"
        if self.failure:
            return "FAILED"
        if not self.ok:
            return "no: check failed"
        if not self.goal:
            return "info"
        return "yes" if self.met else "no"

    def metrics(self) -> dict:
        """The row's flat entry in bench/results.json."""
        if self.skipped:
            return {"skipped": self.skipped}
        if self.failure:
            return {"failed": self.failure, "met": False}
        entry = {"ours": self.ours, "anchor": self.anchor, "ratio": self.ratio, "unit": self.unit, "met": self.met}
        return {key: value for key, value in entry.items() if value is not None} | ({} if self.ok else {"ok": False})


def env() -> dict:
    """The Makefile's environment: the project's venv first on PATH, hub offline, no telemetry, unbuffered output."""
    return {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            "NO_ALBUMENTATIONS_UPDATE": "1", "HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1",
            "PYTHONUNBUFFERED": "1"}


def stream(command: list[str], cwd: Path, environ: dict) -> tuple[int, list[str]]:
    """Run the command, echoing its stdout line by line (stderr goes straight to the terminal); (exit code, lines)."""
    lines = []
    with subprocess.Popen(command, cwd=cwd, env=environ, stdout=subprocess.PIPE, text=True, errors="replace") as proc:
        for line in proc.stdout:
            sys.stdout.write(line)
            sys.stdout.flush()
            lines.append(line)
    return proc.returncode, lines


def result_line(lines: list[str]) -> dict | None:
    """The last stdout line that is a JSON object with a "bench" key, or None."""
    for line in reversed(lines):
        try:
            result = json.loads(line)
        except ValueError:
            continue
        if isinstance(result, dict) and "bench" in result:
            return result
    return None


def parse_rows(bench: str, result: dict | None) -> list[Row]:
    """The script's rows, or one failed row saying what is wrong with its result line."""
    if result is None:
        return [Row(bench, "script failed", failure="no JSON result line on stdout")]
    rows = result.get("rows")
    if not isinstance(rows, list) or not rows:
        return [Row(bench, "script failed", failure="result line has no list of rows")]
    try:
        for row in rows:
            check_row(row)
    except ValueError as error:
        return [Row(bench, "script failed", failure=f"bad result line: {error}")]
    return [Row(bench, r["name"], float(r["ours"]), float(r["anchor"]), r["anchor_name"], r["unit"], r["goal"],
                ok=r.get("ok", True) is not False) for r in rows]


def run_bench(bench: str, command: list[str], cwd: Path = REPO) -> list[Row]:
    """Run one bench script and return its rows (a failed row when it exits non-zero or reports nothing usable)."""
    print(f"\n=== {bench}: {' '.join(command)}", flush=True)
    start = time.perf_counter()
    try:
        code, lines = stream(command, cwd, env())
    except OSError as error:
        return [Row(bench, "script failed", failure=f"could not start: {error}")]
    print(f"=== {bench}: exit {code} after {time.perf_counter() - start:.0f} s", flush=True)
    if code != 0:
        return [Row(bench, "script failed", failure=f"exit {code}")]
    return parse_rows(bench, result_line(lines))


def dvc(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run([str(VENV_BIN / "dvc"), *args], cwd=cwd, env=env(), capture_output=True, text=True)


def time_noop_repro(repeats: int, cwd: Path = REPO, name: str = "no-op dvc repro") -> Row:
    """Median wall time of `dvc repro` with nothing to do (after one warm-up), only if `dvc status` is clean."""
    print(f"\n=== {NOOP}: dvc status, then {repeats + 1} x dvc repro in {cwd} (the first is a warm-up)", flush=True)
    row = Row(NOOP, name, unit="s", goal=NOOP_GOAL_S)
    status = dvc("status", "--json", cwd=cwd)
    if status.returncode != 0:
        row.failure = f"dvc status exit {status.returncode}: {status.stderr.strip()[-300:]}"
        return row
    if json.loads(status.stdout or "{}"):
        row.skipped = "workspace not up to date (dvc status)"
        print(f"=== {NOOP}: skipped, {row.skipped}", flush=True)
        return row
    seconds = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        repro = dvc("repro", cwd=cwd)
        seconds.append(time.perf_counter() - start)
        if repro.returncode != 0:
            row.failure = f"dvc repro exit {repro.returncode}: {repro.stderr.strip()[-300:]}"
            return row
    row.ours = statistics.median(seconds[1:])
    print(f"=== {NOOP}: runs {', '.join(f'{s:.2f}s' for s in seconds)}", flush=True)
    return row


def time_full_repro(noop_repeats: int) -> tuple[Row, Row | None]:
    """Minutes of the first `dvc repro` of the default, in a fresh clone of HEAD with an empty DVC cache; if it
    succeeds and noop_repeats > 0, also the no-op `dvc repro` in that clone (for when this workspace is not up to date).
    """
    row = Row(FULL, "first full dvc repro (clone of HEAD, empty cache)", unit="min", goal=FULL_GOAL_MIN)
    with tempfile.TemporaryDirectory(prefix="bench-repro-") as tmp:
        clone = Path(tmp) / "repo"
        try:
            subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
            for venv in (".venv", ".venv-vllm"):
                (clone / venv).symlink_to(REPO / venv)
            dvc("cache", "dir", "--local", str(Path(tmp) / "cache"), cwd=clone).check_returncode()
        except (OSError, subprocess.CalledProcessError) as error:
            row.failure = f"set-up: {error}"
            return row, None
        print(f"\n=== {FULL}: dvc repro in {clone}", flush=True)
        start = time.perf_counter()
        code, _ = stream([str(VENV_BIN / "dvc"), "repro"], clone, env() | {"PYTHONPATH": str(clone)})
        minutes = (time.perf_counter() - start) / 60
        print(f"=== {FULL}: exit {code} after {minutes:.1f} min", flush=True)
        if code != 0:
            row.failure = f"exit {code}"
            return row, None
        row.ours = minutes
        if not noop_repeats:
            return row, None
        return row, time_noop_repro(noop_repeats, clone, "no-op dvc repro (in the fresh clone)")


def machine() -> dict:
    """Where and when the numbers were taken."""
    cpuinfo = Path("/proc/cpuinfo")
    models = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
              if line.startswith("model name")] if cpuinfo.is_file() else []
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    return {"cores": os.cpu_count(), "cpu": models[0] if models else platform.processor(),
            "load_1min": round(os.getloadavg()[0], 2), "python": platform.python_version(),
            "commit": head.stdout.strip(), "date": now.isoformat(timespec="seconds")}


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def table(rows: list[Row]) -> str:
    """The result table as aligned plain text."""
    header = ("stage", "row", "ours", "anchor", "unit", "ratio", "goal", "met", "anchor is")
    lines = [header]
    for r in rows:
        goal = "" if not r.goal else f"ratio {r.goal}" if r.anchor is not None else f"{r.goal} {r.unit}"
        name = f"{r.name}: {r.failure or r.skipped}" if r.failure or r.skipped else r.name
        lines.append((r.bench, name, _number(r.ours), _number(r.anchor), r.unit,
                      "-" if r.ratio is None else f"{r.ratio:.3f}", goal, r.verdict(), r.anchor_name))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    text = ["  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip() for line in lines]
    return "\n".join([text[0], "  ".join("-" * w for w in widths), *text[1:]])


def write_metrics(path: Path, rows: list[Row], info: dict, keep_others: bool) -> None:
    """Write one entry per row ("<bench>/<row>") plus "machine"; keep_others keeps entries of benches not rerun."""
    old = json.loads(path.read_text()) if keep_others and path.is_file() else {}
    rerun = {r.bench for r in rows}
    entries = {key: value for key, value in old.items() if key != "machine" and key.split("/", 1)[0] not in rerun}
    entries |= {f"{r.bench}/{r.name}": r.metrics() for r in rows}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(entries | {"machine": info}, indent=2) + "\n")


def selected(only: str | None, quick: bool, skip_full: bool) -> list[str]:
    """Bench names to run, in table order; an unknown name in --only is an error naming the known ones."""
    known = [*SCRIPTS, NOOP, FULL]
    names = known if only is None else [n.strip() for n in only.split(",") if n.strip()]
    unknown = sorted(set(names) - set(known))
    if unknown:
        raise UserError(f"--only: unknown {', '.join(unknown)}; known: {', '.join(known)}")
    return [n for n in known if n in names and not (n == FULL and (quick or skip_full))]


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--only", help=f"comma-separated subset of: {', '.join([*SCRIPTS, NOOP, FULL])}")
    parser.add_argument("--quick", action="store_true",
                        help="small sizes, fewer repeats, no full repro; a smoke check: bench/results.json untouched")
    parser.add_argument("--skip-full-repro", action="store_true", help=f"skip {FULL} (~10 min)")
    parser.add_argument("--sweep", action="store_true", help="caption: images/s of the in_process engine over "
                        "concurrency x max_num_seqs instead of the comparison; bench/results.json untouched")
    with user_errors():
        args = parser.parse_args(argv)
        benches = selected(args.only, args.quick, args.skip_full_repro)
    info, rows, noop_repeats = machine(), [], 1 if args.quick else 3
    for bench in benches:
        if bench == NOOP:
            rows.append(time_noop_repro(noop_repeats))
        elif bench == FULL:  # a no-op skipped in this workspace is measured in the clone instead
            retry = bool(rows) and rows[-1].bench == NOOP and bool(rows[-1].skipped)
            full, noop = time_full_repro(noop_repeats if retry else 0)
            if noop:
                rows[-1] = noop
            rows.append(full)
        else:
            arguments = SCRIPTS[bench][1 if args.quick else 0]
            if bench == "caption" and args.sweep:
                arguments = ["--sweep", "--images", "32" if args.quick else "128", "--repeats", "2"]
            rows += run_bench(bench, [str(VENV_BIN / "python"), str(REPO / "bench" / f"{bench}.py"), *arguments])
    print(f"\n{table(rows)}\n")
    if not (args.quick or args.sweep):
        write_metrics(METRICS, rows, info, keep_others=args.only is not None)
        print(f"wrote {METRICS.relative_to(REPO)}")
    failed = [r.bench for r in rows if r.failure]
    if failed:
        print(f"failed: {', '.join(dict.fromkeys(failed))}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
