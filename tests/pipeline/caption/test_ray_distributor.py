"""`caption.distributor: ray`: workers owning vLLM servers on a local Ray cluster; bad cluster params fail fast."""
import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest
import ray

from pipeline.caption.ray_distributor import RayClusterError, caption_on_ray
from pipeline.caption.run import run
from pipeline.caption.shard_io import RUNS_FILE, RunRecord, expected_rows
from pipeline.params.caption import RayOptions, Sampling
from tests.conftest import free_port
from tests.pipeline.caption.test_run import assert_counts_add_up, indexed_rows, raw_keys
from tests.vllm_fixtures import SESSION_MARKER, raw_shards, tiny_params, vllm_pids  # noqa: F401


def ray_params(**ray_options):
    return tiny_params(distributor="ray", ray=RayOptions(**ray_options))


def caption_one_shard(params, tmp_path):
    """caption_on_ray on a shard that no worker may ever read (the cluster checks come first)."""
    return caption_on_ray(params, {"00000": tmp_path / "absent.tar"}, {"00000": ["k"]}, tmp_path / "captions",
                          tmp_path / "logs", RunRecord(tmp_path))


@pytest.mark.parametrize("via_env", [False, True])
def test_unreachable_address_fails_fast_naming_the_key(tmp_path, monkeypatch, via_env):
    address = f"127.0.0.1:{free_port()}"
    if via_env:
        monkeypatch.setenv("RAY_ADDRESS", address)
    params = ray_params() if via_env else ray_params(address=address)
    key = "RAY_ADDRESS" if via_env else "caption.ray.address"
    with pytest.raises(RayClusterError, match=rf"{key}.*no Ray cluster reachable at '{address}'"):
        caption_one_shard(params, tmp_path)
    assert not ray.is_initialized()


@pytest.mark.expensive
def test_gpus_asked_on_a_cpu_only_cluster_fails_naming_the_key(tmp_path):
    ray.init(address="local", num_cpus=1, num_gpus=0, include_dashboard=False)
    try:
        with pytest.raises(RayClusterError, match=r"caption.ray.gpus_per_worker: 1 GPUs per worker, but no node"):
            caption_one_shard(ray_params(gpus_per_worker=1), tmp_path)
        assert ray.available_resources().get("CPU") == 1, "no worker was started"
    finally:
        ray.shutdown()


def busy_caption_worker() -> int | None:
    """The pid of a caption worker of this test session that is captioning a shard right now."""
    for entry in Path("/proc").iterdir():
        try:
            title = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if title.startswith("ray::CaptionWorker.run") and SESSION_MARKER.encode() in environ:
            return int(entry.name)
    return None


def servers_left(before: set[int], timeout_s: float = 60) -> set[int]:
    """vLLM processes not in `before` that are still alive after up to timeout_s (servers take a moment to exit)."""
    deadline = time.monotonic() + timeout_s
    while (left := set(vllm_pids()) - before) and time.monotonic() < deadline:
        time.sleep(0.5)
    return left


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_worker_killed_mid_shard_its_shard_is_redone_once(raw_shards, tmp_path, monkeypatch):  # noqa: F811
    """Two workers on a local Ray instance; one is SIGKILLed while captioning (after a first shard is written).
    Its shard goes to another worker, a replacement starts, and every (key, caption_index) row is written once."""
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    params = tiny_params(distributor="ray", ray=RayOptions(workers=2, startup_timeout_s=300), captions_per_image=2,
                         concurrency=1, sampling=Sampling(max_tokens=48))
    out, keys = tmp_path / "captions", raw_keys(raw_shards)
    before = set(vllm_pids())
    outcome = {}

    def stage():
        try:
            outcome["metrics"] = run(params, raw_shards, out, tmp_path / "caption.json", tmp_path / "logs")
        except BaseException as err:  # noqa: BLE001 (reported by the assertion below)
            outcome["error"] = err

    thread = threading.Thread(target=stage)
    thread.start()
    killed = None
    while thread.is_alive() and killed is None:
        if list(out.glob("*.parquet")):
            killed = busy_caption_worker()
            if killed:
                os.kill(killed, signal.SIGKILL)
        time.sleep(0.05)
    thread.join(timeout=600)
    assert not thread.is_alive() and "error" not in outcome, outcome.get("error")
    assert killed, "a worker was killed while captioning, after a first shard was written"

    metrics = outcome["metrics"]
    n_images = sum(map(len, keys.values()))
    assert_counts_add_up(metrics, n_images, 2)
    assert indexed_rows(out) == {shard: expected_rows(shard_keys, 2) for shard, shard_keys in keys.items()}, (
        "every (key, caption_index) row once, none lost")
    ray_counts = metrics["ray"]
    assert ray_counts["worker_failures"] == 1 and ray_counts["shards_redone"] == 1
    # A replacement starts when the shard finds no idle worker (the usual case here: the other worker is busy).
    assert ray_counts["workers"] == 2 and ray_counts["workers_started"] in (2, 3)
    nodes = ray_counts["shards_per_node"]  # one node here; each shard counted once, where it was committed
    assert len(nodes) == 1 and sum(nodes.values()) == len(keys)
    assert list(ray_counts["workers_per_node"]) == list(nodes)
    # the two first workers were placed; a replacement may still be waiting for a CPU when the last shard commits
    assert 2 <= sum(ray_counts["workers_per_node"].values()) <= ray_counts["workers_started"]
    assert metrics["captioned_this_run"] == n_images
    assert json.loads((out / RUNS_FILE).read_text())["runs"][0]["images"] == n_images
    assert not list(out.glob(".*.tmp")), "no attempt file is left"
    assert not ray.is_initialized(), "the local Ray instance is stopped"
    assert not servers_left(before), "no vLLM server outlives its worker"

    again = run(params, raw_shards, out, tmp_path / "caption.json", tmp_path / "logs")
    assert again["shards_skipped"] == again["shards"] and "ray" not in again, "finished shards start no cluster"
    assert_counts_add_up(again, n_images, 2)
