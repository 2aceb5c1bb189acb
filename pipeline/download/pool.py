"""img2dataset's multiprocessing distributor on a process pool that notices a dead worker.

img2dataset's own (a `multiprocessing.Pool`) replaces a worker that dies (killed, out of memory) and waits for the
lost shard forever. This one runs the same downloader on a `ProcessPoolExecutor`, which fails every pending shard
when a worker dies: the stage then stops with one line, the finished shards kept for the rerun
(docs/pipeline.md, "When a stage fails").
"""
import multiprocessing
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool

from tqdm import tqdm

from core.cli import StageFailure

STOP_GRACE_S = 10.0


class WorkerDied(StageFailure):
    """A download worker process died; the shards it had are not finished."""


def multiprocessing_distributor(processes_count, downloader, reader, _, max_shard_retry):
    """The signature of img2dataset.distributor.multiprocessing_distributor: each shard of `reader` downloaded by
    `downloader` in one of `processes_count` spawned processes (each replaced after 5 shards, as img2dataset does),
    at most two shards per process queued; failed shards retried `max_shard_retry` times."""
    from img2dataset.distributor import retrier  # here: the stage names params errors before img2dataset loads

    with ProcessPoolExecutor(processes_count, mp_context=multiprocessing.get_context("spawn"),
                             max_tasks_per_child=5) as pool:

        def run(shards):
            failed, pending = [], set()
            with tqdm(desc="download: shards", unit="shard") as progress:
                for shard in shards:
                    pending.add(pool.submit(downloader, shard))
                    while len(pending) >= 2 * processes_count:
                        failed += _finished(pending, progress)
                while pending:
                    failed += _finished(pending, progress)
            return failed

        try:
            retrier(run, run(reader), max_shard_retry)
        except BrokenProcessPool as exc:
            children = multiprocessing.active_children()  # img2dataset's progress logger waits for every shard
            for child in children:
                child.terminate()
            for child in children:
                child.join(STOP_GRACE_S)
            raise WorkerDied("download: a worker process died (killed or out of memory) before finishing its "
                             "shard; rerun to resume from the finished shards") from exc


def _finished(pending: set, progress: tqdm) -> list:
    """Wait for one or more of `pending` to finish; returns the rows of the shards that failed."""
    done, _ = wait(pending, return_when=FIRST_COMPLETED)
    pending -= done
    progress.update(len(done))
    return [row for status, row in (future.result() for future in done) if status is False]
