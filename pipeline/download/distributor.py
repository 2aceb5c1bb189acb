"""img2dataset's `multiprocessing` and `ray` distributors, on the stage's job runner (core/jobs.py).

img2dataset's own multiprocessing distributor (a `multiprocessing.Pool`) replaces a worker that dies (killed, out of
memory) and waits for the lost shard forever; its Ray distributor submits every shard at once and retries none. On
the job runner a dead local worker ends the stage with one line, the finished shards kept for the rerun
(docs/pipeline.md, "When a stage fails"); Ray reruns a task whose worker died; failed shards are retried
`max_shard_retry` times either way; and the metrics say which Ray node downloaded how many shards.
"""
from core.jobs import Jobs


def on_jobs(jobs: Jobs):
    """A function with img2dataset's distributor signature that downloads each shard of `reader` with `downloader`
    as one job of `jobs`."""
    from img2dataset.distributor import retrier  # here: the stage names params errors before img2dataset loads

    def distributor(processes_count, downloader, reader, subjob_size, max_shard_retry):
        def run(shards) -> list:
            results = jobs.map(downloader, ((shard,) for shard in shards), "download: shards", unit="shard")
            return [row for status, row in results if status is False]

        retrier(run, run(reader), max_shard_retry)

    return distributor
