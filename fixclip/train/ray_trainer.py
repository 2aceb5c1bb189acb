"""The training loop on a Ray cluster: ``loop.train`` under Ray Train's TorchTrainer, one rank per Ray Train worker.

Ray Train places the workers (CPUs, GPUs and custom resources per worker), makes the process group (gloo on CPU, nccl
on GPU) and sets the torchrun variables the loop reads. The rest is the loop's own: data sharded by rank, checkpoints
in ``dirs.checkpoint_dir``, exact resume, DVCLive curves from rank 0. When a worker dies, Ray Train restarts the whole
group (``ray.max_failures`` times) and the new group resumes from the last checkpoint, so the final weights equal an
uninterrupted run's.

Every node must see the driver's working directory (repository, shards, checkpoints) at the same path; ``fit``
checks that on every node before any work. The caller is connected to Ray.
"""
import os
import uuid
from collections import Counter
from pathlib import Path

import ray
from ray.train import FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from core.cli import UserError
from .config import RunDirs, TrainConfig
from .data import shard_list
from .loop import train

KEY = "train.ray"


class RayPlacementError(UserError):
    """The cluster cannot host the workers asked for, or a node cannot see the run's files."""


@ray.remote(num_cpus=0)
class _Ledger:
    """What the driver learns from the workers: how often the group started, where its ranks ran, rank 0's metrics."""

    def __init__(self):
        self.starts, self.nodes, self.metrics = 0, {}, None

    def started(self, rank: int, node_id: str) -> None:
        self.starts += rank == 0
        self.nodes[rank] = node_id

    def finished(self, metrics: dict) -> None:
        self.metrics = metrics

    def read(self) -> tuple[int, dict, dict | None]:
        return self.starts, self.nodes, self.metrics


def _worker_loop(config: dict) -> None:
    """One Ray Train worker: the loop as one rank, in the driver's working directory."""
    os.chdir(config["cwd"])
    ledger = config["ledger"]
    ray.get(ledger.started.remote(ray.train.get_context().get_world_rank(), ray.get_runtime_context().get_node_id()))
    metrics = train(config["cfg"], config["dirs"])
    if metrics is not None:
        ray.get(ledger.finished.remote(metrics))


def worker_resources(cfg: TrainConfig) -> dict[str, float]:
    """The Ray resources one worker asks for."""
    return {"CPU": cfg.ray.cpus_per_worker, **({"GPU": 1.0} if cfg.ray.use_gpu else {}),
            **cfg.ray.resources_per_worker}


def check_resources(cfg: TrainConfig) -> None:
    """The workers must fit the live nodes as they are, or Ray Train would wait for them forever."""
    need = worker_resources(cfg)
    nodes = [node["Resources"] for node in ray.nodes() if node["Alive"]]
    total = ray.cluster_resources()
    if cfg.ray.use_gpu and not total.get("GPU"):
        raise RayPlacementError(f"{KEY}.use_gpu: true, but the Ray cluster has no GPU (resources: {total})")
    for name in cfg.ray.resources_per_worker:
        if not total.get(name):
            raise RayPlacementError(f"{KEY}.resources_per_worker: no node of the Ray cluster has resource {name!r}")
    fits = sum(int(min(node.get(name, 0.0) / amount for name, amount in need.items() if amount > 0)) for node in nodes)
    if fits < cfg.ray.workers:
        key = "cpus_per_worker" if fits == 0 and not cfg.ray.resources_per_worker else "workers"
        raise RayPlacementError(f"{KEY}.{key}: {cfg.ray.workers} workers of {need} each do not fit the Ray "
                                f"cluster's nodes (room for {fits}; nodes: {nodes})")


@ray.remote(num_cpus=0)
def _missing(paths: list[str]) -> list[str]:
    return [path for path in paths if not os.path.exists(path)]


def check_shared_storage(cfg: TrainConfig, dirs: RunDirs) -> None:
    """Every live node sees the checkpoint folder (a token file the driver writes now), the shards and the base
    weights at the driver's paths."""
    folder = Path(dirs.checkpoint_dir).absolute()
    folder.mkdir(parents=True, exist_ok=True)
    token = folder / f".visible-{uuid.uuid4().hex}"
    token.touch()
    paths = [str(token), *(str(Path(s).absolute()) for s in shard_list(cfg.shards)),
             str(Path(cfg.base_model.weights).absolute())]
    try:
        nodes = [node for node in ray.nodes() if node["Alive"]]
        pinned = [NodeAffinitySchedulingStrategy(node["NodeID"], soft=False) for node in nodes]
        answers = ray.get([_missing.options(scheduling_strategy=where).remote(paths) for where in pinned])
    finally:
        token.unlink(missing_ok=True)
    for node, missing in zip(nodes, answers):
        if missing:
            what = f"the checkpoint folder {folder}" if str(token) in missing else ", ".join(missing)
            raise RayPlacementError(f"{KEY}: node {node['NodeName']} ({node['NodeID'][:12]}) cannot see {what}; every "
                                    "node needs the repository, data/ and checkpoints/ at the driver's path on shared "
                                    "storage")


def fit(cfg: TrainConfig, dirs: RunDirs) -> dict:
    """Train on ``cfg.ray.workers`` Ray Train workers; returns rank 0's metrics plus where and how often it ran."""
    check_resources(cfg)
    check_shared_storage(cfg, dirs)
    ledger = _Ledger.remote()
    storage = Path(dirs.checkpoint_dir).absolute().parent / "ray_train"  # Ray Train's run state and error logs
    trainer = TorchTrainer(
        _worker_loop,
        train_loop_config={"cfg": cfg, "dirs": dirs, "cwd": os.getcwd(), "ledger": ledger},
        torch_config=TorchConfig(backend="nccl" if cfg.ray.use_gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=cfg.ray.workers, use_gpu=cfg.ray.use_gpu,
                                     resources_per_worker=worker_resources(cfg)),
        run_config=RunConfig(name=Path(dirs.checkpoint_dir).name, storage_path=str(storage),
                             failure_config=FailureConfig(max_failures=cfg.ray.max_failures)))
    trainer.fit()
    starts, nodes, metrics = ray.get(ledger.read.remote())
    ray.kill(ledger)
    return {**metrics, "ray": {"workers": cfg.ray.workers, "restarts": starts - 1,
                               "workers_per_node": dict(sorted(Counter(nodes.values()).items()))}}
