"""`caption.distributor: ray`: caption workers on a Ray cluster, each owning its own vLLM servers.

The driver (the stage process) joins the cluster at `caption.ray.address` (null: `RAY_ADDRESS`, else it starts a
local Ray instance and stops it afterwards), checks that the cluster can host a worker, and starts `workers` actors
(core/jobs.py's ActorPool, which places, replaces and stops them).
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
from pathlib import Path

from core.jobs import ActorSettings, accelerator_ids, actor_pool, node_address
from core.outputs import write_bytes
from core.ray_session import RayClusterError, this_node
from pipeline.caption.client import CaptionResult, CaptionServiceError, caption_stream
from pipeline.caption.fleet import STOP_GRACE_S, VllmFleet
from pipeline.caption.shard_io import RunRecord, expected_rows, finished_rows, read_images, shard_parquet
from pipeline.params.caption import CaptionParams


class CaptionWorker:
    """A Ray actor: its own vLLM servers on its node, and one whole shard at a time."""

    def __init__(self, params: CaptionParams, folder: str, log_dir: str):
        try:
            os.chdir(folder)  # relative paths in params (model, python, data) mean what they mean to the driver
        except OSError as err:
            raise RayClusterError(f"caption worker on {node_address()}: {err}; every node must see the repository "
                                  f"and data at the driver's path") from None
        if params.ray.gpus_per_worker:  # the GPUs Ray gave this actor, split among its servers by the fleet
            params = params.model_copy(update={"gpus": accelerator_ids()})
        self.params, self.fleet = params, VllmFleet(params, Path(log_dir))
        self.endpoints: list = []  # server URLs or EngineProcess workers

    def node(self) -> str:
        """The id of the Ray node this worker was placed on (asked before `start`, so answered at once)."""
        return this_node()

    def start(self) -> str:
        """Start this worker's servers and wait until they are healthy; returns the node's address."""
        self.endpoints = self.fleet.__enter__()
        return node_address()

    def run(self, shard: str, tar_path: str, keys: list[str], attempt_path: str) -> dict:
        """Caption every image of one shard, write all its rows to `attempt_path`; returns its counters."""
        rows: list[CaptionResult] = []

        async def collect(result: CaptionResult) -> None:
            rows.append(result)

        images = read_images({shard: Path(tar_path)}, self.params.image_extensions)
        stats = asyncio.run(caption_stream(self.params, self.endpoints, images, len(keys), collect))
        write_bytes(Path(attempt_path), shard_parquet(rows, self.params.model))
        return {"images": len(keys)} | stats

    def stop(self) -> None:
        """Stop this worker's servers, also while `start` is still waiting for them: killing the actor alone would
        leave a server that is still starting up without its engine's clean-up (its EngineCore outlives it)."""
        self.fleet.stop()


class Commits:
    """The driver's side of each shard: the attempt file a worker is to write, and the one rename that commits it."""

    def __init__(self, params: CaptionParams, todo: dict[str, Path], keys: dict[str, list[str]], out_dir: Path,
                 record: RunRecord):
        self.params, self.todo, self.keys, self.record = params, todo, keys, record
        self.out_dir = out_dir.absolute()
        self.attempts: dict[str, Path] = {}  # shard -> its attempt in flight
        self.written: list[Path] = []  # every attempt file handed out
        self.tokens = self.transient_retries = self.committed = 0

    def job_args(self, shard: str) -> tuple:
        """A fresh attempt file for `shard` (a lost worker that still runs can only write its own)."""
        self.attempts[shard] = self.out_dir / f".{shard}.parquet.{len(self.written)}.tmp"
        self.written.append(self.attempts[shard])
        return shard, str(self.todo[shard].absolute()), self.keys[shard], str(self.attempts[shard])

    def commit(self, shard: str, result: dict, worker: str, node: str) -> None:
        """Rename the worker's complete attempt onto the shard's parquet: the one write the shard gets."""
        attempt = self.attempts.pop(shard)
        if not attempt.exists():
            raise RayClusterError(f"{worker} wrote {attempt}, which this driver cannot see: the captions folder "
                                  f"must be on storage shared by every node")
        if finished_rows(attempt) != expected_rows(self.keys[shard], self.params.captions_per_image):
            raise RuntimeError(f"{worker} wrote {attempt} without exactly the rows of shard {shard}")
        os.replace(attempt, self.out_dir / f"{shard}.parquet")
        self.record.add(result["images"], result["tokens"])
        self.tokens += result["tokens"]
        self.transient_retries += result["transient_retries"]
        self.committed += 1
        print(f"caption: shard {shard} by {worker} on node {node[:12]} ({self.committed}/{len(self.todo)})",
              file=sys.stderr)


def caption_on_ray(
    params: CaptionParams, todo: dict[str, Path], keys: dict[str, list[str]], out_dir: Path, log_dir: Path,
    record: RunRecord,
) -> dict:
    """Caption the shards in `todo` on Ray workers; returns the counters run.py expects, plus `ray`."""
    options, log_dir = params.ray, Path(log_dir).absolute()
    settings = ActorSettings("caption.ray", options.workers, options.gpus_per_worker, options.startup_timeout_s,
                             options.max_worker_failures, stop_timeout_s=STOP_GRACE_S + 5)
    commits = Commits(params, todo, keys, Path(out_dir), record)
    try:
        with actor_pool(options.address, "caption.ray.address", CaptionWorker,
                        lambda name: (params, os.getcwd(), str(log_dir / name)), settings,
                        lost=(CaptionServiceError,), label="caption", hint=f"server logs under {log_dir}") as pool:
            ray_counts = pool.run(list(todo), commits.job_args, commits.commit)
    finally:
        for attempt in commits.written:
            attempt.unlink(missing_ok=True)
    return {"tokens": commits.tokens, "transient_retries": commits.transient_retries,
            "ray": {"workers": ray_counts["workers"], "workers_started": ray_counts["workers_started"],
                    "worker_failures": ray_counts["worker_failures"], "shards_redone": ray_counts["jobs_redone"],
                    "workers_per_node": ray_counts["workers_per_node"],
                    "shards_per_node": ray_counts["jobs_per_node"]}}
