"""img2dataset's download workers, each with the download guard installed (pipeline/download/guard.py).

`img2dataset.download` builds one `Downloader` and hands it to its distributor, which pickles it to every worker
process (multiprocessing, Spark or Ray) and calls it once per shard. `guarded_downloads` makes it build ours, which
installs the guard's opener in the process it is called in before downloading a shard, and settles the shard
(pipeline/download/canonical.py) in that process once img2dataset has finished it.
"""
import contextlib
import functools
import importlib
import urllib.request
from pathlib import Path

from img2dataset.downloader import Downloader

from core.jobs import Jobs
from pipeline.download.canonical import settle
from pipeline.download.guard import Policy, opener


class GuardedDownloader(Downloader):
    def __init__(self, policy: Policy, **kwargs):
        super().__init__(**kwargs)
        self.policy = policy

    def __call__(self, row):
        urllib.request.install_opener(opener(self.policy))
        return super().__call__(row)

    def download_shard(self, row):
        super().download_shard(row)
        shard_id = row[0]
        settle(Path(self.output_folder), f"{shard_id:0{self.oom_shard_count}d}")


@contextlib.contextmanager
def guarded_downloads(policy: Policy, jobs: Jobs | None):
    """Inside the block, `img2dataset.download` downloads through GuardedDownloader, and its `multiprocessing` and
    `ray` distributors run the shards on `jobs` (pipeline/download/distributor.py; None: Spark, img2dataset's own)."""
    from pipeline.download.distributor import on_jobs  # here: the workers, which import this module, do not need it

    main = importlib.import_module("img2dataset.main")  # the module: the package's `main` is its CLI function
    originals = main.Downloader, main.multiprocessing_distributor, main.ray_distributor
    main.Downloader = functools.partial(GuardedDownloader, policy)
    if jobs is not None:
        main.multiprocessing_distributor = main.ray_distributor = on_jobs(jobs)
    try:
        yield
    finally:
        main.Downloader, main.multiprocessing_distributor, main.ray_distributor = originals
