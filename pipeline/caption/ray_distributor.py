"""`caption.distributor: ray`: caption workers on a Ray cluster, each owning its own vLLM servers.

The driver (the stage process) joins the cluster at `caption.ray.address` (null: `RAY_ADDRESS`, else it starts a
local Ray instance and stops it afterwards), checks that the cluster can host a worker, and starts `workers` actors.
Each actor (the main environment, 1 CPU and `gpus_per_worker` GPUs, Ray setting its `CUDA_VISIBLE_DEVICES`) starts
`num_servers` vLLM servers on its node with the existing fleet code (interpreter `caption.python`), then captions one
whole input shard at a time with the existing async client, reading the raw tar from shared storage. The driver
hands each idle worker the next shard. Every node must see the repository and the data at the driver's path.

A shard is written exactly once. A worker writes its shard to an attempt file of its own (`.<shard>.parquet.<n>.tmp`,
complete and fsynced) and returns; the driver checks the rows and renames it onto `<shard>.parquet`. A worker that
dies (actor lost, or its server gone: `CaptionServiceError`) is killed, its shard goes back to the front of the
queue and a replacement worker starts, up to `max_worker_failures`. Each shard is in exactly one of queued, in
flight or committed, and only the driver commits, once, from the attempt it is waiting for; so a "lost" worker that
is in fact still running can at most write its own attempt file, which nothing renames (the driver removes it when it
ends, the next run's clean-up otherwise). Resume, the fingerprint and the metrics stay with `run.py`: the driver adds
each committed shard to the run record as it lands.

Why actors owning vLLM servers, not Ray Data's vLLM engine processor: docs/pipeline.md, "Captioning with an MLLM".
"""
import asyncio
import os
import sys
from collections import Counter, deque
from dataclasses import dataclass
from pathlib import Path

import ray
from ray.exceptions import RayActorError

from pipeline.caption.client import CaptionResult, CaptionServiceError, caption_stream
from pipeline.caption.fleet import STOP_GRACE_S, VllmFleet
from pipeline.caption.shard_io import RunRecord, expected_rows, finished_rows, read_images, shard_parquet
from core.outputs import write_bytes
from pipeline.params.caption import CaptionParams, RayOptions
from core.ray_session import RayClusterError, ray_session, this_node


def check_resources(options: RayOptions) -> None:
    """A worker asking for GPUs must fit on some node, or it would wait forever."""
    if not options.gpus_per_worker:
        return
    gpus = [node["Resources"].get("GPU", 0) for node in ray.nodes() if node["Alive"]]
    if max(gpus, default=0) < options.gpus_per_worker:
        raise RayClusterError(
            f"caption.ray.gpus_per_worker: {options.gpus_per_worker} GPUs per worker, but no node of the Ray "
            f"cluster has that many (GPUs per node: {gpus}, cluster: {ray.cluster_resources()}); "
            f"use 0 on a CPU-only cluster"
        )


class CaptionWorker:
    """A Ray actor: its own vLLM servers on its node, and one whole shard at a time."""

    def __init__(self, params: CaptionParams, folder: str, log_dir: str):
        try:
            os.chdir(folder)  # relative paths in params (model, python, data) mean what they mean to the driver
        except OSError as err:
            raise RayClusterError(f"caption worker on {ray.util.get_node_ip_address()}: {err}; every node must see "
                                  f"the repository and data at the driver's path") from None
        if params.ray.gpus_per_worker:  # the GPUs Ray gave this actor, split among its servers by the fleet
            params = params.model_copy(update={"gpus": ray.get_runtime_context().get_accelerator_ids()["GPU"]})
        self.params, self.fleet = params, VllmFleet(params, Path(log_dir))
        self.endpoints: list = []  # server URLs or EngineProcess workers

    def node(self) -> str:
        """The id of the Ray node this worker was placed on (asked before `start`, so answered at once)."""
        return this_node()

    def start(self) -> str:
        """Start this worker's servers and wait until they are healthy; returns the node's address."""
        self.endpoints = self.fleet.__enter__()
        return ray.util.get_node_ip_address()

    def caption_shard(self, shard: str, tar_path: str, keys: list[str], attempt_path: str) -> dict:
        """Caption every image of one shard, write all its rows to `attempt_path`; returns its counters."""
        rows: list[CaptionResult] = []

        async def collect(result: CaptionResult) -> None:
            rows.append(result)

        images = read_images({shard: Path(tar_path)}, self.params.image_extensions)
        stats = asyncio.run(caption_stream(self.params, self.endpoints, images, len(keys), collect))
        write_bytes(Path(attempt_path), shard_parquet(rows, self.params.model))
        return {"images": len(keys)} | stats

    def stop(self) -> None:
        """Stop this worker's servers, also while `start` is still waiting for them (the actor runs two calls at
        once): killing the actor alone would leave a server that is still starting up without its engine's
        clean-up (its EngineCore outlives it)."""
        self.fleet.stop()


RemoteCaptionWorker = ray.remote(CaptionWorker)


@dataclass
class Worker:
    name: str
    actor: object
    placed: object  # ObjectRef of the id of the Ray node it runs on
    shard: str | None = None  # the shard in flight
    attempt: Path | None = None  # where it writes that shard


class Dispatch:
    """The driver's bookkeeping: every shard is queued, in flight on one worker, or committed."""

    def __init__(self, params: CaptionParams, todo: dict[str, Path], keys: dict[str, list[str]], out_dir: Path,
                 log_dir: Path, record: RunRecord):
        self.params, self.todo, self.keys, self.record = params, todo, keys, record
        self.out_dir, self.log_dir = out_dir.absolute(), log_dir.absolute()
        self.queue = deque(todo)
        self.calls: dict = {}  # ObjectRef -> Worker: a start-up or a shard in flight
        self.idle: list[Worker] = []
        self.committed: set[str] = set()
        self.attempts: list[Path] = []
        self.tokens = self.transient_retries = self.started = self.failed = self.redone = 0
        self.spawned: list[Worker] = []
        self.shards_per_node: Counter = Counter()  # shards committed

    def run(self) -> dict:
        options = self.params.ray
        for _ in range(min(options.workers, len(self.todo))):
            self.spawn()
        try:
            while len(self.committed) < len(self.todo):
                serving = self.idle or any(worker.shard for worker in self.calls.values())
                ready, _ = ray.wait(list(self.calls), num_returns=1,
                                    timeout=None if serving else options.startup_timeout_s)
                if not ready:
                    raise RayClusterError(
                        f"caption.ray.startup_timeout_s: no caption worker was placed and serving within "
                        f"{options.startup_timeout_s:g} s (each asks 1 CPU and {options.gpus_per_worker} GPUs; "
                        f"cluster: {ray.cluster_resources()}; server logs under {self.log_dir})"
                    )
                self.settle(ready[0], self.calls.pop(ready[0]))
        finally:
            self.stop_all()
            for attempt in self.attempts:
                attempt.unlink(missing_ok=True)
        return {"tokens": self.tokens, "transient_retries": self.transient_retries,
                "ray": {"workers": options.workers, "workers_started": self.started, "worker_failures": self.failed,
                        "shards_redone": self.redone, "workers_per_node": self.placements(),
                        "shards_per_node": dict(sorted(self.shards_per_node.items()))}}

    def spawn(self) -> None:
        name = f"worker-{self.started}"
        self.started += 1
        actor = RemoteCaptionWorker.options(
            num_cpus=1, num_gpus=self.params.ray.gpus_per_worker, max_restarts=0, max_concurrency=2,  # stop || start
            runtime_env={"env_vars": {"TQDM_DISABLE": "1"}},  # the driver prints one line per shard instead
        ).remote(self.params, os.getcwd(), str(self.log_dir / name))
        worker = Worker(name, actor, placed=actor.node.remote())
        self.spawned.append(worker)
        self.calls[actor.start.remote()] = worker

    def settle(self, ref, worker: Worker) -> None:
        try:
            result = ray.get(ref)
        except RayActorError as err:
            if err.actor_init_failed:  # the same on every node: do not retry
                raise RayClusterError(f"caption {worker.name} could not be created: {err}") from None
            self.lose(worker, err)
            return
        except CaptionServiceError as err:  # its servers stopped answering mid-shard
            self.lose(worker, err)
            return
        if worker.shard:
            self.commit(worker, result)
        else:
            node = ray.get(worker.placed)
            print(f"caption: {worker.name} serving on {result} (node {node[:12]})", file=sys.stderr)
        self.assign(worker)

    def assign(self, worker: Worker) -> None:
        worker.shard = worker.attempt = None
        if not self.queue:
            self.idle.append(worker)
            return
        worker.shard = self.queue.popleft()
        worker.attempt = self.out_dir / f".{worker.shard}.parquet.{len(self.attempts)}.tmp"
        self.attempts.append(worker.attempt)
        ref = worker.actor.caption_shard.remote(worker.shard, str(self.todo[worker.shard].absolute()),
                                                self.keys[worker.shard], str(worker.attempt))
        self.calls[ref] = worker

    def commit(self, worker: Worker, result: dict) -> None:
        """Rename the worker's complete attempt onto the shard's parquet: the one write the shard gets."""
        shard, attempt = worker.shard, worker.attempt
        if not attempt.exists():
            raise RayClusterError(f"{worker.name} wrote {attempt}, which this driver cannot see: the captions folder "
                                  f"must be on storage shared by every node")
        if finished_rows(attempt) != expected_rows(self.keys[shard], self.params.captions_per_image):
            raise RuntimeError(f"{worker.name} wrote {attempt} without exactly the rows of shard {shard}")
        os.replace(attempt, self.out_dir / f"{shard}.parquet")
        self.committed.add(shard)
        self.shards_per_node[ray.get(worker.placed)] += 1
        self.record.add(result["images"], result["tokens"])
        self.tokens += result["tokens"]
        self.transient_retries += result["transient_retries"]
        print(f"caption: shard {shard} by {worker.name} ({len(self.committed)}/{len(self.todo)})", file=sys.stderr)

    def lose(self, worker: Worker, error: Exception) -> None:
        """A worker died or lost its servers: kill it, queue its shard first, start a replacement."""
        ray.kill(worker.actor, no_restart=True)
        self.failed += 1
        if worker.shard:
            self.queue.appendleft(worker.shard)
            self.redone += 1
        summary = f"{type(error).__name__}: {' '.join(str(error).split())[:300]}"
        if self.failed > self.params.ray.max_worker_failures:
            raise RayClusterError(f"caption.ray.max_worker_failures: {self.failed} caption workers lost, more "
                                  f"than {self.params.ray.max_worker_failures}; last: {summary}")
        print(f"caption: {worker.name} lost ({summary}); shard {worker.shard or '-'} queued again", file=sys.stderr)
        while self.queue and self.idle:
            self.assign(self.idle.pop())
        if self.queue:
            self.spawn()

    def placements(self) -> dict[str, int]:
        """Workers started per Ray node (placed by their 1 CPU and GPUs; one lost before it said where is left out)."""
        nodes = Counter()
        for worker in self.spawned:
            try:
                nodes[ray.get(worker.placed, timeout=10)] += 1
            except (RayActorError, ray.exceptions.GetTimeoutError):
                continue
        return dict(sorted(nodes.items()))

    def stop_all(self) -> None:
        """Stop every worker's servers gracefully (idle, starting or mid-shard); then kill every actor."""
        stopping = [worker.actor.stop.remote() for worker in self.idle + list(self.calls.values())]
        if stopping:
            ray.wait(stopping, num_returns=len(stopping), timeout=STOP_GRACE_S + 5)
        for worker in self.idle + list(self.calls.values()):
            ray.kill(worker.actor, no_restart=True)
        self.idle.clear()
        self.calls.clear()


def caption_on_ray(
    params: CaptionParams, todo: dict[str, Path], keys: dict[str, list[str]], out_dir: Path, log_dir: Path,
    record: RunRecord,
) -> dict:
    """Caption the shards in `todo` on Ray workers; returns the counters run.py expects, plus `ray`."""
    with ray_session(params.ray.address, "caption.ray.address"):
        check_resources(params.ray)
        return Dispatch(params, todo, keys, Path(out_dir), Path(log_dir), record).run()
