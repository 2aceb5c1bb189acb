"""One job runner for the data stages: a stage's jobs run in this process, on local worker processes, as Ray tasks,
or on Ray actors that keep state between jobs, as its `distributor` param says (docs/architecture.md, "Where the
distributor lives"). Download, caption and shard run their jobs here; with core/ray_session.py (the Ray check and the
join) this is the only code that calls Ray (training runs on Ray Train instead, fixclip/train/ray_trainer.py).

- `job_runner(...)` gives a `Jobs`: `map(function, jobs, desc)` runs `function(*job)` for every job and returns the
  results in job order, with a progress bar, keeping at most `in_flight` jobs pending (so `jobs` may be a generator
  over millions of shards).
- Local processes: a worker that dies (killed, out of memory) ends the stage with one line (`WorkerDied`, a
  StageFailure: exit 1) instead of waiting for its job forever; the processes the stage started are stopped first.
- Ray tasks (1 CPU each): Ray reruns a task whose worker died; `tasks_per_node` counts where they ran, for the
  stage's metrics. Every node must see the repository and the data at the driver's path: a task runs there.
- `ActorPool`: workers that start once and then take one job at a time (caption: each owns its vLLM servers); a lost
  worker's job goes back to the front of the queue and a replacement starts, up to `max_worker_failures`.
"""
import multiprocessing
import os
import sys
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import dataclass

from tqdm import tqdm

from .cli import StageFailure
from .ray_session import RayClusterError, ray_session, require_ray, this_node

STOP_GRACE_S = 10.0  # for the processes a stage started, once one of its workers died


class WorkerDied(StageFailure):
    """A worker process died (killed, out of memory) before finishing its job."""


def _count(jobs: Iterable[tuple], total: int | None) -> int | None:
    """The number of jobs for the progress bar: `total`, else the length of a list of jobs (None for a generator)."""
    return len(jobs) if total is None and hasattr(jobs, "__len__") else total


class Jobs:
    """Runs `function(*job)` for each job; subclasses say where (`submit`) and how a finished job is collected."""

    in_flight = 1

    def __init__(self):
        self.tasks_per_node: Counter = Counter()

    def map(self, function: Callable, jobs: Iterable[tuple], desc: str, unit: str = "job",
            total: int | None = None) -> list:
        """The results of `function(*job)` for every job, in job order."""
        results, pending = {}, {}
        total = _count(jobs, total)
        with tqdm(desc=desc, unit=unit, total=total) as bar:
            for index, job in enumerate(jobs):
                pending[self.submit(function, job)] = index
                while len(pending) >= self.in_flight:
                    self.collect(pending, results, bar)
            while pending:
                self.collect(pending, results, bar)
        return [results[index] for index in range(len(results))]

    def submit(self, function: Callable, job: tuple):
        """Start one job; returns what `collect` waits on."""
        raise NotImplementedError

    def collect(self, pending: dict, results: dict, bar: tqdm) -> None:
        """Wait for one or more pending jobs; move their results from `pending` into `results` by job index."""
        raise NotImplementedError


class InProcess(Jobs):
    """Each job in this process, one after the other."""

    def map(self, function: Callable, jobs: Iterable[tuple], desc: str, unit: str = "job",
            total: int | None = None) -> list:
        total = _count(jobs, total)
        return [function(*job) for job in tqdm(jobs, desc=desc, unit=unit, total=total)]


class LocalProcesses(Jobs):
    """Jobs on the worker processes of a ProcessPoolExecutor, two per worker queued."""

    def __init__(self, pool: ProcessPoolExecutor, workers: int):
        super().__init__()
        self.pool, self.in_flight = pool, 2 * workers

    def submit(self, function: Callable, job: tuple):
        return self.pool.submit(function, *job)

    def collect(self, pending: dict, results: dict, bar: tqdm) -> None:
        done, _ = wait(pending, return_when=FIRST_COMPLETED)
        for future in done:
            results[pending.pop(future)] = future.result()
        bar.update(len(done))


def _on_node(folder: str, function: Callable, *args) -> tuple[str, object]:
    """A Ray task: (the node that ran it, `function(*args)`), run in the driver's working folder `folder` so that
    relative paths mean what they mean to the driver."""
    os.chdir(folder)
    return this_node(), function(*args)


class RayTasks(Jobs):
    """Jobs as Ray tasks of 1 CPU each, two per CPU of the cluster queued."""

    def __init__(self):
        import ray

        super().__init__()
        self.remote = ray.remote(num_cpus=1)(_on_node)
        self.in_flight = max(2, 2 * int(ray.cluster_resources().get("CPU", 1)))

    def submit(self, function: Callable, job: tuple):
        return self.remote.remote(os.getcwd(), function, *job)

    def collect(self, pending: dict, results: dict, bar: tqdm) -> None:
        import ray

        done, _ = ray.wait(list(pending), num_returns=1)
        for ref in done:
            node, results[pending.pop(ref)] = ray.get(ref)
            self.tasks_per_node[node] += 1
        bar.update(len(done))


@contextmanager
def job_runner(key: str, distributor: str, workers: int, isolate: bool = False, max_tasks_per_child: int | None = None,
               rerun: str = "rerun the stage") -> Iterator[Jobs]:
    """The `Jobs` for a stage whose distributor param `key` is `distributor`: `ray` joins `RAY_ADDRESS` (or starts a
    local Ray instance of `workers` CPUs, stopped afterwards) and runs Ray tasks, failing before any work, naming
    `key`, when Ray is not installed; anything else runs `workers` local processes, or this process for 1 unless
    `isolate` (a job changes its process, e.g. installs a URL opener). `max_tasks_per_child`: a local worker process
    is replaced after that many jobs (spawned, not forked). `rerun`: what the one line of a `WorkerDied` advises."""
    if distributor == "ray":
        require_ray(key)
        with ray_session(None, None, num_cpus=workers):
            yield RayTasks()
        return
    if workers == 1 and not isolate:
        yield InProcess()
        return
    context = multiprocessing.get_context("spawn") if max_tasks_per_child else None
    with ProcessPoolExecutor(workers, mp_context=context, max_tasks_per_child=max_tasks_per_child) as pool:
        try:
            yield LocalProcesses(pool, workers)
        except BrokenProcessPool as exc:
            _stop_children()
            raise WorkerDied(f"{key.split('.')[0]}: a worker process died (killed or out of memory) before finishing "
                             f"its job; {rerun}") from exc


def _stop_children() -> None:
    """Stop every process this one started (e.g. a library's progress logger that waits for the lost job)."""
    children = multiprocessing.active_children()
    for child in children:
        child.terminate()
    for child in children:
        child.join(STOP_GRACE_S)


@dataclass(frozen=True)
class ActorSettings:
    """How an ActorPool places its workers; `key` is the params section they come from (named in errors)."""

    key: str
    workers: int
    gpus_per_worker: float
    startup_timeout_s: float
    max_worker_failures: int
    stop_timeout_s: float = 30.0  # for every worker's `stop()` at the end


@dataclass
class _Worker:
    name: str
    actor: object
    placed: object  # ObjectRef of the id of the Ray node it runs on
    job: str | None = None  # the job in flight


class ActorPool:
    """Jobs on Ray actors that start once and keep their state (e.g. model servers) from job to job.

    `actor_class` has `node()` (answered at once), `start()` (returns where it serves, once ready), `run(*args)` (one
    job) and `stop()` (also while `start` is still waiting: the actor runs two calls at once). Each actor asks 1 CPU
    and `gpus_per_worker` GPUs and is built with `actor_args(name)`. Every job is queued, in flight on one worker, or
    done: `on_done(job, result, worker, node)` runs once per job, in this process, and may raise to stop the run. A
    worker whose call fails with RayActorError or one of `lost` is killed, its job queued first and a replacement
    started, up to `max_worker_failures`.
    """

    def __init__(self, actor_class: type, actor_args: Callable[[str], tuple], settings: ActorSettings,
                 lost: tuple[type[Exception], ...] = (), label: str = "worker", hint: str = ""):
        import ray

        self.remote_class = ray.remote(actor_class)
        self.actor_args, self.settings, self.lost, self.label, self.hint = actor_args, settings, lost, label, hint
        self.queue: deque = deque()
        self.calls: dict = {}  # ObjectRef -> _Worker: a start-up or a job in flight
        self.idle: list[_Worker] = []
        self.spawned: list[_Worker] = []
        self.done = self.started = self.failed = self.redone = 0
        self.jobs_per_node: Counter = Counter()

    def run(self, jobs: list[str], job_args: Callable[[str], tuple], on_done: Callable) -> dict:
        """Run every job (`run(*job_args(job))` on some worker); returns the pool's counters."""
        import ray

        self.check_resources()
        self.job_args, self.on_done, self.queue = job_args, on_done, deque(jobs)
        for _ in range(min(self.settings.workers, len(jobs))):
            self.spawn()
        try:
            while self.done < len(jobs):
                serving = self.idle or any(worker.job for worker in self.calls.values())
                ready, _ = ray.wait(list(self.calls), num_returns=1,
                                    timeout=None if serving else self.settings.startup_timeout_s)
                if not ready:
                    raise RayClusterError(
                        f"{self.settings.key}.startup_timeout_s: no {self.label} worker was placed and serving within "
                        f"{self.settings.startup_timeout_s:g} s (each asks 1 CPU and {self.settings.gpus_per_worker} "
                        f"GPUs; cluster: {ray.cluster_resources()}{'; ' + self.hint if self.hint else ''})")
                self.settle(ready[0], self.calls.pop(ready[0]))
        finally:
            self.stop_all()
        return {"workers": self.settings.workers, "workers_started": self.started, "worker_failures": self.failed,
                "jobs_redone": self.redone, "workers_per_node": self.placements(),
                "jobs_per_node": dict(sorted(self.jobs_per_node.items()))}

    def check_resources(self) -> None:
        """A worker asking for GPUs must fit on some node, or it would wait forever."""
        import ray

        if not self.settings.gpus_per_worker:
            return
        gpus = [node["Resources"].get("GPU", 0) for node in ray.nodes() if node["Alive"]]
        if max(gpus, default=0) < self.settings.gpus_per_worker:
            raise RayClusterError(
                f"{self.settings.key}.gpus_per_worker: {self.settings.gpus_per_worker} GPUs per worker, but no node of "
                f"the Ray cluster has that many (GPUs per node: {gpus}, cluster: {ray.cluster_resources()}); "
                f"use 0 on a CPU-only cluster")

    def spawn(self) -> None:
        name = f"worker-{self.started}"
        self.started += 1
        actor = self.remote_class.options(
            num_cpus=1, num_gpus=self.settings.gpus_per_worker, max_restarts=0, max_concurrency=2,  # stop || start
            runtime_env={"env_vars": {"TQDM_DISABLE": "1"}},  # the driver prints one line per job instead
        ).remote(*self.actor_args(name))
        worker = _Worker(name, actor, placed=actor.node.remote())
        self.spawned.append(worker)
        self.calls[actor.start.remote()] = worker

    def settle(self, ref, worker: _Worker) -> None:
        import ray
        from ray.exceptions import RayActorError

        try:
            result = ray.get(ref)
        except RayActorError as err:
            if err.actor_init_failed:  # the same on every node: do not retry
                raise RayClusterError(f"{self.label} {worker.name} could not be created: {err}") from None
            self.lose(worker, err)
            return
        except self.lost as err:
            self.lose(worker, err)
            return
        node = ray.get(worker.placed)
        if worker.job:
            self.on_done(worker.job, result, worker.name, node)
            self.done += 1
            self.jobs_per_node[node] += 1
        else:
            print(f"{self.label}: {worker.name} serving on {result} (node {node[:12]})", file=sys.stderr)
        self.assign(worker)

    def assign(self, worker: _Worker) -> None:
        worker.job = None
        if not self.queue:
            self.idle.append(worker)
            return
        worker.job = self.queue.popleft()
        self.calls[worker.actor.run.remote(*self.job_args(worker.job))] = worker

    def lose(self, worker: _Worker, error: Exception) -> None:
        """A worker died or failed: kill it, queue its job first, start a replacement."""
        import ray

        ray.kill(worker.actor, no_restart=True)
        self.failed += 1
        if worker.job:
            self.queue.appendleft(worker.job)
            self.redone += 1
        summary = f"{type(error).__name__}: {' '.join(str(error).split())[:300]}"
        if self.failed > self.settings.max_worker_failures:
            raise RayClusterError(f"{self.settings.key}.max_worker_failures: {self.failed} {self.label} workers lost, "
                                  f"more than {self.settings.max_worker_failures}; last: {summary}")
        print(f"{self.label}: {worker.name} lost ({summary}); {worker.job or '-'} queued again", file=sys.stderr)
        while self.queue and self.idle:
            self.assign(self.idle.pop())
        if self.queue:
            self.spawn()

    def placements(self) -> dict[str, int]:
        """Workers started per Ray node (one lost before it said where is left out)."""
        import ray
        from ray.exceptions import GetTimeoutError, RayActorError

        nodes = Counter()
        for worker in self.spawned:
            try:
                nodes[ray.get(worker.placed, timeout=10)] += 1
            except (RayActorError, GetTimeoutError):
                continue
        return dict(sorted(nodes.items()))

    def stop_all(self) -> None:
        """Stop every worker gracefully (idle, starting or mid-job); then kill every actor."""
        import ray

        workers = self.idle + list(self.calls.values())
        stopping = [worker.actor.stop.remote() for worker in workers]
        if stopping:
            ray.wait(stopping, num_returns=len(stopping), timeout=self.settings.stop_timeout_s)
        for worker in workers:
            ray.kill(worker.actor, no_restart=True)
        self.idle.clear()
        self.calls.clear()


@contextmanager
def actor_pool(address: str | None, address_key: str, actor_class: type, actor_args: Callable[[str], tuple],
               settings: ActorSettings, **options) -> Iterator[ActorPool]:
    """An ActorPool (`options`: its `lost`, `label`, `hint`) on the Ray cluster at `address` (from params
    `address_key`; None: `RAY_ADDRESS`, else a local instance, stopped afterwards)."""
    with ray_session(address, address_key):
        yield ActorPool(actor_class, actor_args, settings, **options)


def node_address() -> str:
    """The IP address of the Ray node this task or actor runs on."""
    import ray

    return ray.util.get_node_ip_address()


def accelerator_ids() -> list[str]:
    """The GPUs Ray gave this actor (the ids it also set in CUDA_VISIBLE_DEVICES)."""
    import ray

    return ray.get_runtime_context().get_accelerator_ids()["GPU"]
