"""Chaos: the whole DAG, on a tiny profile, survives SIGKILLs of random processes of its running stages.

From a seed, a plan of kills: every stage that runs processes of its own at least once, the rest drawn. Each attempt
runs `dvc repro`, waits for the planned stage, then kills one process of that stage's tree (the stage itself, a
download worker, a vLLM engine, a shard worker, a data loader worker, ...) at a random moment within the stage's
duration in the uninterrupted run, and reruns. After the kills a last `dvc repro` must finish, and the outputs must
equal an uninterrupted run's: every URL accounted for once, the same captions and shard members, the same weights;
no process of the run and no temporary file is left. Captions are byte-identical between runs here because the
profile gives vLLM one sequence at a time (docs/pipeline.md, "What varies between runs").
"""
import contextlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import tarfile
import tempfile
import time
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from tests.conftest import FIGURES, file_digests, raw_digests, run, stage_env
from tests.test_dvc_pipeline import VLLM_PYTHON, _commit, _processes_in, _shrink

pytestmark = pytest.mark.slow
SEED = 0
KILLS = 10
ORDER = ["source", "download", "caption", "benchmarks", "shard", "train", "evaluate", "export"]
TARGETS = ["download", "caption", "shard", "train", "evaluate", "export"]
STAGE = re.compile(r"-m stages\.(\w+)")
PLANNED = 12  # kills planned: one in the last stage may find it finished
# Left in the temporary folder by others, on purpose or by SIGKILL: torch's compile cache (kept across runs), and the
# folders that multiprocessing (for its sockets) and wandb (at import; timm imports it) make and remove at exit.
THIRD_PARTY_TEMPORARY = re.compile(r"torchinductor_.*|pymp-\w+|tmp\w+wandb-(media|artifacts)")
HANG_S = 180  # a run this much longer than the uninterrupted one is stuck


def _tiny(root: Path) -> None:
    _shrink(root)
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["source"]["toyworld"]["num_images"] = 24
    params["download"].update(number_sample_per_shard=8, processes_count=2)
    params["caption"]["server"]["max_num_seqs"] = 1  # one sequence per step: the same captions after a resume
    params["caption"]["sampling"]["max_tokens"] = 64
    params["caption"]["filters"]["keep_truncated"] = True
    params["train"].update(samples=48, checkpoint_every=1)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    _commit(root, "tiny")


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        tree.setdefault(parent, []).append(int(pid))
    return tree


def _tree(pid: int) -> list[int]:
    """pid and its descendants."""
    children, found, todo = _children(), [], [pid]
    while todo:
        found.append(todo.pop())
        todo.extend(children.get(found[-1], []))
    return found


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def _running_stage(dvc_pid: int) -> tuple[str, int] | None:
    for pid in _tree(dvc_pid):
        match = STAGE.search(_cmdline(pid))
        if match:
            return match.group(1), pid
    return None


def _timed_run(root: Path) -> dict[str, float]:
    """An uninterrupted `dvc repro`; returns the seconds each stage's process ran."""
    dvc = subprocess.Popen(["dvc", "repro"], cwd=root, env=stage_env(), stdout=subprocess.DEVNULL,
                           stderr=subprocess.STDOUT)
    seen: dict[str, list[float]] = {}
    while dvc.poll() is None:
        current = _running_stage(dvc.pid)
        if current:
            seen.setdefault(current[0], [time.monotonic()]).append(time.monotonic())
        time.sleep(0.05)
    assert dvc.returncode == 0
    return {stage: times[-1] - times[0] for stage, times in seen.items()}


def _chaos_run(root: Path, plan: list[tuple[str, float]], rng: random.Random, log: Path, limit_s: float) -> list[dict]:
    """One `dvc repro` that takes kills from the head of `plan` ((stage, delay) in stage order): a random process of
    the stage running `delay` s after the planned stage started (or of a later one, if it ended sooner). Returns the
    kills made; each says whether its stage survived it."""
    with open(log, "a") as out:
        out.write("\n=== dvc repro ===\n")
        out.flush()
        dvc = subprocess.Popen(["dvc", "repro"], cwd=root, env=stage_env(), stdout=out, stderr=subprocess.STDOUT)
    kills, started, began = [], None, time.monotonic()
    try:
        while dvc.poll() is None and plan:
            assert time.monotonic() - began < limit_s, f"dvc repro stuck after the kills {kills}"
            current, (target, delay) = _running_stage(dvc.pid), plan[0]
            if current and ORDER.index(current[0]) >= ORDER.index(target):
                started = started or time.monotonic()
                if time.monotonic() - started >= delay:
                    victim = rng.choice([pid for pid in _tree(current[1]) if _cmdline(pid)])
                    kills.append({"stage": current[0], "process": _cmdline(victim)[:90],
                                  "is_stage": victim == current[1]})
                    os.kill(victim, signal.SIGKILL)
                    plan.pop(0)
                    started = None
            time.sleep(0.05)
        try:
            dvc.wait(timeout=max(1.0, limit_s - (time.monotonic() - began)))
        except subprocess.TimeoutExpired:
            raise AssertionError(f"dvc repro stuck after the kills {kills}") from None
    finally:
        for pid in reversed(_tree(dvc.pid)):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        dvc.wait()
    failed = re.findall(r"failed to reproduce '(\w+)'", log.read_text().rsplit("=== dvc repro ===", 1)[1])
    for kill in kills:
        kill["survived"] = not (failed and kill is kills[-1] and failed[0] == kill["stage"])
    return kills


def _outputs(root: Path) -> dict:
    captions = {}
    for path in sorted((root / "data/captions").glob("*.parquet")):
        table = pq.read_table(path, columns=["key", "caption_index", "caption"]).to_pylist()
        captions.update({(row["key"], row["caption_index"]): row["caption"] for row in table})
    shards = {}
    for path in sorted((root / "data/shards").rglob("*.tar")):
        shards.update({member: path.name for member in _members(path)})
    records = [url for path in sorted((root / "data/raw").glob("*.parquet"))
               for url in pq.read_table(path, columns=["url"]).column("url").to_pylist()]
    assert len(records) == len(set(records)), "a URL recorded twice"
    return {"records": len(records), "urls": json.loads((root / "metrics/download.json").read_text()),
            "captions": captions, "shards": shards, "raw": raw_digests(root / "data/raw"),
            "shard_bytes": file_digests(root / "data/shards"), "weights": file_digests(root / "models/fixclip")}


def _members(path: Path) -> list[str]:
    with tarfile.open(path) as archive:
        return archive.getnames()


def _leftovers(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")
                  if p.name.endswith(".tmp") and ".dvc" not in p.relative_to(root).parts)


@pytest.mark.skipif(not VLLM_PYTHON.exists(), reason="needs the vLLM environment (make envs)")
@pytest.mark.timeout(1800)
def test_dag_survives_random_kills(tmp_path, repo_copy, monkeypatch, request):
    _tiny(repo_copy)
    temporary = Path(tempfile.mkdtemp())  # the stages' temporary files (a short path: vLLM puts sockets there)
    request.addfinalizer(lambda: shutil.rmtree(temporary, ignore_errors=True))
    monkeypatch.setenv("TMPDIR", str(temporary))
    reference = tmp_path / "reference"
    run(["git", "clone", "-q", str(repo_copy), str(reference)], tmp_path)
    started = time.monotonic()
    durations = _timed_run(reference)
    uninterrupted_s = time.monotonic() - started

    rng = random.Random(SEED)
    targets = sorted(TARGETS + rng.choices(TARGETS, k=PLANNED - len(TARGETS)), key=ORDER.index)
    plan = [(target, rng.uniform(0.05, 0.8) * durations[target]) for target in targets]
    kills, runs, log = [], 0, tmp_path / "chaos.log"
    started = time.monotonic()
    while plan:
        runs += 1
        made = _chaos_run(repo_copy, plan, rng, log, limit_s=uninterrupted_s + HANG_S)
        kills += made
        if not made:  # the run ended before the rest of the plan could be placed
            break
    run(["dvc", "repro"], repo_copy)
    chaos_s = time.monotonic() - started
    left = sorted(p.name for p in temporary.iterdir())
    FIGURES.append(f"chaos: {len(kills)} kills in {runs} runs of dvc repro, stages hit "
                   f"{dict(Counter(k['stage'] for k in kills))}, {sum(not k['survived'] for k in kills)} stopped "
                   f"their stage; {chaos_s:.0f} s with the reruns (uninterrupted {uninterrupted_s:.0f} s)")
    FIGURES.extend(f"  {kill['stage']:<9} {'stopped it' if not kill['survived'] else 'survived  '}  "
                   f"{'stage' if kill['is_stage'] else 'child'}: {kill['process']}" for kill in kills)
    FIGURES.append(f"  left in the temporary folder: {left}")
    assert len(kills) >= KILLS

    got, want = _outputs(repo_copy), _outputs(reference)
    download = got["urls"]
    assert download["urls"] == 24 == download["success"] + sum(download["failures"].values())
    assert got["records"] == 24
    assert got["raw"] == want["raw"]
    assert got["captions"] == want["captions"]
    assert got["shards"] == want["shards"] and got["shard_bytes"] == want["shard_bytes"]
    assert got["weights"] == want["weights"]
    assert not _leftovers(repo_copy) and not _processes_in(repo_copy)
    assert not [name for name in left if not THIRD_PARTY_TEMPORARY.fullmatch(name)], left
