"""The job runner (core/jobs.py): results in job order wherever the jobs run, a bounded number pending, a dead local
worker as one StageFailure, a Ray task rerun when its worker dies, and an actor pool that redoes a lost worker's job
once."""
import multiprocessing
import os
import signal
import sys
import time
from pathlib import Path

import pytest
import ray
import ray.cloudpickle

from core.jobs import ActorSettings, InProcess, LocalProcesses, RayTasks, WorkerDied, actor_pool, job_runner

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray's workers need not import the tests


def slow_square(value: int, folder: str) -> int:
    """value squared, later for small values (so that jobs finish out of order); leaves a mark when done."""
    time.sleep(0.05 * (value % 3))
    Path(folder, f"done-{value}").touch()
    return value * value


def die_once(value: int, folder: str) -> int:
    """Kill the process running it, the first time it is run with this value."""
    mark = Path(folder, f"died-{value}")
    if not mark.exists():
        mark.touch()
        os.kill(os.getpid(), signal.SIGKILL)
    return value


def kill_own_process() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


@pytest.fixture(scope="module")
def local_ray():
    ray.init(address="local", num_cpus=2, include_dashboard=False)
    yield
    ray.shutdown()


def bounded_jobs(folder: Path, count: int, in_flight: int):
    """(value, folder) jobs; before handing out job k, at least k - in_flight + 1 jobs must be done."""
    for k in range(count):
        assert len(list(folder.glob("done-*"))) >= k - in_flight + 1, f"job {k} handed out with {in_flight} pending"
        yield k, str(folder)


@pytest.mark.parametrize("distributor, workers, kind", [("local", 1, InProcess), ("local", 2, LocalProcesses)])
def test_local_results_come_in_job_order_with_few_pending(tmp_path, distributor, workers, kind):
    with job_runner("shard.distributor", distributor, workers) as jobs:
        assert type(jobs) is kind
        results = jobs.map(slow_square, bounded_jobs(tmp_path, 12, max(jobs.in_flight, 1)), "squares")
    assert results == [k * k for k in range(12)] and not jobs.tasks_per_node


def test_isolated_jobs_run_in_a_worker_process_even_for_one_worker(tmp_path):
    with job_runner("download.distributor", "multiprocessing", 1, isolate=True, max_tasks_per_child=2) as jobs:
        assert type(jobs) is LocalProcesses
        pids = jobs.map(os.getpid, [()] * 5, "pids")
    assert os.getpid() not in pids and len(set(pids)) == 3, "a worker replaced after 2 jobs"


def test_a_dead_local_worker_ends_the_stage_with_one_failure(tmp_path):
    with pytest.raises(WorkerDied, match=r"^shard: a worker process died \(killed or out of memory\) before "
                                         r"finishing its job; rerun the stage$"):
        with job_runner("shard.distributor", "local", 2) as jobs:
            jobs.map(kill_own_process, [()] * 4, "doomed")
    assert not multiprocessing.active_children(), "the stage's other processes are stopped"


@pytest.mark.expensive  # a local Ray instance
def test_ray_tasks_in_job_order_rerun_when_their_worker_dies(tmp_path, local_ray):
    with job_runner("shard.distributor", "ray", 2) as jobs:
        assert type(jobs) is RayTasks and jobs.in_flight == 4
        squares = jobs.map(slow_square, bounded_jobs(tmp_path, 10, jobs.in_flight), "squares")
        survivors = jobs.map(die_once, [(k, str(tmp_path)) for k in range(3)], "die once")
    assert squares == [k * k for k in range(10)] and survivors == [0, 1, 2]
    assert len(jobs.tasks_per_node) == 1 and sum(jobs.tasks_per_node.values()) == 13
    assert ray.is_initialized(), "a connection the caller holds is left open"


class Doubler:
    """An actor for the pool: dies in the middle of job `fatal` the first time it is given it."""

    def __init__(self, folder: str):
        self.folder = folder

    def node(self) -> str:
        return ray.get_runtime_context().get_node_id()

    def start(self) -> str:
        return "here"

    def run(self, job: str) -> int:
        mark = Path(self.folder, f"lost-{job}")
        if job == "fatal" and not mark.exists():
            mark.touch()
            os.kill(os.getpid(), signal.SIGKILL)
        return 2 * len(job)

    def stop(self) -> None:
        Path(self.folder, f"stopped-{os.getpid()}").touch()


@pytest.mark.expensive  # a local Ray instance
def test_actor_pool_redoes_a_lost_workers_job_once(tmp_path, local_ray):
    done = []
    settings = ActorSettings("caption.ray", workers=2, gpus_per_worker=0, startup_timeout_s=60,
                             max_worker_failures=1)
    jobs = ["a", "bb", "fatal", "ccc", "dddd"]
    with actor_pool(None, "caption.ray.address", Doubler, lambda name: (str(tmp_path),), settings,
                    label="doubler") as pool:
        counts = pool.run(jobs, lambda job: (job,), lambda job, result, worker, node: done.append((job, result)))
    assert sorted(done) == sorted((job, 2 * len(job)) for job in jobs), "every job done once"
    assert counts["worker_failures"] == 1 and counts["jobs_redone"] == 1 and counts["workers_started"] in (2, 3)
    assert sum(counts["jobs_per_node"].values()) == len(jobs)
    live = counts["workers_started"] - counts["worker_failures"]  # 1 if the other worker took the lost job
    assert len(list(tmp_path.glob("stopped-*"))) == live, "every live worker was stopped"


@pytest.mark.expensive  # a local Ray instance
def test_actor_pool_gives_up_after_max_worker_failures(tmp_path, local_ray):
    from core.ray_session import RayClusterError

    settings = ActorSettings("caption.ray", workers=1, gpus_per_worker=0, startup_timeout_s=60,
                             max_worker_failures=0)
    with pytest.raises(RayClusterError, match=r"^caption.ray.max_worker_failures: 1 doubler workers lost, more than 0"):
        with actor_pool(None, "caption.ray.address", Doubler, lambda name: (str(tmp_path),), settings,
                        label="doubler") as pool:
            pool.run(["fatal"], lambda job: (job,), lambda *done: None)
