"""Training on Ray Train (local Ray, CPU, gloo): the same weights as torchrun, a killed worker resumed from its
checkpoint to the same weights, and placement errors that name the key before any work."""
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import ray
import torch
import yaml

from fixclip.model_folder import WEIGHTS
from fixclip.train import checkpoints as ckpt
from fixclip.train import ray_trainer
from pipeline.paths import stage_command
from tests.conftest import REPO, full_params, stage_env
from tests.fixclip.train.test_data import tiny_run, train_command, write_train_shards

pytestmark = pytest.mark.slow  # each Ray Train fit starts Ray workers (~1 min on 2 cores)
# 24 steps of 2 x 8 samples, a checkpoint every 4: long enough to kill a worker between two checkpoints.
RUN = {"samples": 384, "batch_size": 8, "num_workers": 1, "checkpoint_every": 4, "seed": 2}
RAY = {"distributor": "ray", "ray": {"workers": 2, "max_failures": 1}}


@pytest.fixture(scope="module")
def train_dir(tmp_path_factory):
    return write_train_shards(tmp_path_factory.mktemp("shards"))


@pytest.fixture(scope="module")
def local_ray():
    ray.init(address="local", num_cpus=2, include_dashboard=False, object_store_memory=200 * 2**20)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, train_dir, local_ray):
    """An uninterrupted run on 2 Ray Train workers: (its folder, its metrics)."""
    root = tmp_path_factory.mktemp("ray")
    return root, ray_trainer.fit(*tiny_run(root, train_dir, **RUN, **RAY))


def _weights(root):
    return torch.load(root / "model" / WEIGHTS, weights_only=True)


def test_two_ray_train_workers_match_torchrun_with_two_processes(tmp_path, train_dir, uninterrupted):
    root, metrics = uninterrupted
    assert metrics["world_size"] == 2 and metrics["steps"] == 24 and metrics["ray"]["restarts"] == 0
    assert sum(metrics["ray"]["workers_per_node"].values()) == 2
    env = stage_env()
    env["OMP_NUM_THREADS"] = "1"
    torchrun = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc-per-node=2", "--rdzv-backend=c10d",
         "--rdzv-endpoint=127.0.0.1:0", *train_command(*tiny_run(tmp_path, train_dir, **RUN))],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert torchrun.returncode == 0, torchrun.stdout[-3000:] + torchrun.stderr[-3000:]
    expected, got = _weights(tmp_path), _weights(root)
    assert expected.keys() == got.keys()
    for name in expected:  # the DDP test's tolerance
        assert torch.allclose(got[name], expected[name], rtol=1e-4, atol=1e-5), name


def _train_workers() -> list[int]:
    """The pids of the live Ray Train workers: Ray titles their processes ``ray::RayTrainWorker...`` (and their
    data-loader children inherit the title, so a worker is one whose parent is not a worker)."""
    titled = {}
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and b"RayTrainWorker" in (proc / "cmdline").read_bytes():
                titled[int(proc.name)] = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except OSError:  # ended meanwhile
            continue
    return sorted(pid for pid, parent in titled.items() if parent not in titled)


def test_killed_worker_restarts_the_group_from_its_checkpoint(tmp_path, train_dir, uninterrupted):
    cfg, dirs = tiny_run(tmp_path, train_dir, **RUN, **RAY)
    outcome = {}
    runner = threading.Thread(target=lambda: outcome.update(metrics=ray_trainer.fit(cfg, dirs)))
    runner.start()
    deadline = time.monotonic() + 240
    while ckpt.saved_steps(dirs.checkpoint_dir)[-1:] < [8]:
        assert runner.is_alive() and time.monotonic() < deadline, "the run ended before its checkpoint at step 8"
        time.sleep(0.05)
    workers = _train_workers()
    assert len(workers) == 2, workers
    os.kill(workers[-1], signal.SIGKILL)
    runner.join(300)
    assert not runner.is_alive() and "metrics" in outcome, "the run did not finish after the kill"

    metrics = outcome["metrics"]
    assert metrics["ray"]["restarts"] == 1
    assert 8 <= metrics["resumed_from_step"] < 24 and metrics["steps"] == 24
    expected, got = _weights(uninterrupted[0]), _weights(tmp_path)
    for name in expected:
        assert torch.equal(got[name], expected[name]), name


def test_unreachable_address_fails_within_a_minute_in_one_line_naming_the_key(tmp_path, train_dir):
    cfg, _ = tiny_run(tmp_path, train_dir, **RUN, distributor="ray", ray={"address": "127.0.0.1:9"})
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(full_params({"train": cfg.model_dump(exclude_defaults=True)})))
    env = {**stage_env(), "PYTHONPATH": str(REPO)}
    env.pop("RAY_ADDRESS", None)
    started = time.monotonic()
    stage = subprocess.run(stage_command("train"), cwd=tmp_path, env=env, capture_output=True,
                           text=True, timeout=120)
    assert time.monotonic() - started < 60
    assert stage.returncode == 2 and "Traceback" not in stage.stderr, stage.stderr[-3000:]
    assert stage.stderr.strip().splitlines()[-1].startswith(
        "error: train.ray.address: no Ray cluster reachable at '127.0.0.1:9'"), stage.stderr[-3000:]


@pytest.mark.parametrize(("ray_options", "key"), [
    ({"use_gpu": True}, r"train\.ray\.use_gpu: true, but the Ray cluster has no GPU"),
    ({"workers": 3}, r"train\.ray\.workers: 3 workers of .* do not fit"),
    ({"cpus_per_worker": 4}, r"train\.ray\.cpus_per_worker: 2 workers of .* do not fit"),
    ({"resources_per_worker": {"trainer": 1}}, r"train\.ray\.resources_per_worker: no node .* 'trainer'"),
])
def test_workers_the_cluster_cannot_host_fail_naming_the_key(tmp_path, train_dir, local_ray, ray_options, key):
    cfg, dirs = tiny_run(tmp_path, train_dir, **RUN, distributor="ray",
                         device="auto", ray={"workers": 2, **ray_options})
    with pytest.raises(ray_trainer.RayPlacementError, match=key):
        ray_trainer.fit(cfg, dirs)
    assert not (tmp_path / "checkpoints").exists() or not any((tmp_path / "checkpoints").iterdir())
