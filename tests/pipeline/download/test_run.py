"""The download stage runs real img2dataset against a real loopback HTTP server; every URL is accounted for."""
import io
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import tarfile
import threading
import time

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline.download import run as download_run
from pipeline.params.download import DownloadParams
from pipeline.params import ParamsError, exit_on_params_error
from tests.conftest import REPO, free_port, raw_digests

LOOPBACK = ["127.0.0.0/8"]  # the download guard refuses loopback unless opened (test_guard.py)


def _encode(image: Image.Image, fmt: str, **kw) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kw)
    return buffer.getvalue()


def _photo(size=(80, 60)) -> Image.Image:
    rng = np.random.default_rng(0)
    gradient = np.linspace(0, 255, size[0] * size[1] * 3).reshape(size[1], size[0], 3)
    return Image.fromarray((gradient * 0.7 + rng.integers(0, 70, gradient.shape)).astype(np.uint8))


def _cases(base: str, routes: dict) -> dict[str, str | None]:
    """url -> expected failure class (None = success). Registers the server side of each case."""
    photo = _photo()
    jpeg = _encode(photo, "JPEG", quality=90)
    served = {
        "/good.jpg": (200, "image/jpeg", jpeg, 0),
        "/good.png": (200, "image/png", _encode(photo, "PNG"), 0),
        "/cmyk.jpg": (200, "image/jpeg", _encode(photo.convert("CMYK"), "JPEG"), 0),
        "/deep.png": (200, "image/png", _encode(Image.fromarray(
            (np.arange(60 * 80, dtype=np.uint16).reshape(60, 80) * 13)), "PNG"), 0),
        "/palette.gif": (200, "image/gif", _encode(photo.convert("P"), "GIF"), 0),
        "/truncated.jpg": (200, "image/jpeg", jpeg[: len(jpeg) // 3], 0),
        "/not-an-image.jpg": (200, "image/jpeg", b"<html>this is not an image</html>" * 20, 0),
        "/slow.jpg": (200, "image/jpeg", jpeg, 4),
    }
    routes.update(served)
    return {
        f"{base}/good.jpg": None,
        f"{base}/good.png": None,
        f"{base}/cmyk.jpg": None,
        f"{base}/deep.png": None,
        f"{base}/palette.gif": "any",  # OpenCV builds differ on GIF; either outcome must be accounted for
        f"{base}/truncated.jpg": "any",  # decoders may recover a partial image
        f"{base}/not-an-image.jpg": "decode_error",
        f"{base}/missing.jpg": "http_404",
        f"http://127.0.0.1:{free_port()}/refused.jpg": "connection_refused",
        f"{base}/slow.jpg": "timeout",
    }


def _urls_file(tmp_path, urls) -> str:
    path = tmp_path / "urls.parquet"
    pd.DataFrame({"url": urls, "uid": [f"u{i}" for i in range(len(urls))],
                  "alt_text": [f"alt {i}" for i in range(len(urls))]}).to_parquet(path, index=False)
    return path


def _read_shards(out_dir):
    records = pd.concat(pd.read_parquet(p) for p in sorted(out_dir.glob("*.parquet")))
    members = {}
    for tar in sorted(out_dir.glob("*.tar")):
        with tarfile.open(tar) as archive:
            for member in archive.getmembers():
                members[member.name] = archive.extractfile(member).read()
    return records, members


@pytest.mark.expensive
def test_every_url_accounted(tmp_path, http_server):
    base, routes = http_server
    expected = _cases(base, routes)
    params = DownloadParams(image_size=32, timeout=1, processes_count=1, thread_count=4, number_sample_per_shard=4,
                            allow_networks=LOOPBACK)
    summary = download_run.run(params, _urls_file(tmp_path, list(expected)), tmp_path / "raw")

    assert summary["urls"] == len(expected)
    assert summary["success"] + sum(summary["failures"].values()) == len(expected)
    assert summary["shards"] == 3
    records, members = _read_shards(tmp_path / "raw")
    by_url = records.set_index("url")
    for url, failure in expected.items():
        row = by_url.loc[url]
        if failure is None:
            assert row["status"] == "success", (url, row["error_message"])
            image = Image.open(io.BytesIO(members[f"{row['key']}.jpg"]))
            assert image.size == (32, 32)
            assert image.mode == ("L" if url.endswith("deep.png") else "RGB")  # grey stays grey
            assert members[f"{row['key']}.txt"].decode() == row["caption"]
            assert json.loads(members[f"{row['key']}.json"])["uid"] == row["uid"]
        elif failure != "any":
            assert row["status"] != "success"
            assert download_run.failure_class(row["error_message"]) == failure, row["error_message"]


@pytest.mark.expensive
def test_file_urls_relative_to_the_repo(tmp_path):
    """A relative `file:` URL opens under the repo (an allowed root), and stays relative in the samples' json."""
    (tmp_path / "imgs").mkdir()
    _photo().save(tmp_path / "imgs" / "a.png")
    urls = pd.DataFrame({"url": ["file:imgs/a.png", "file:imgs/absent.png"], "uid": ["a", "b"],
                         "alt_text": ["x", "y"]})
    urls.to_parquet(tmp_path / "urls.parquet")
    summary = download_run.run(DownloadParams(processes_count=1, thread_count=2, allow_file_roots=["imgs"]),
                               tmp_path / "urls.parquet", tmp_path / "raw", root=tmp_path)
    assert summary["success"] == 1 and summary["failures"] == {"file_not_found": 1}
    records, members = _read_shards(tmp_path / "raw")
    assert [json.loads(b)["url"] for n, b in members.items() if n.endswith(".json")] == ["file:imgs/a.png"]


@pytest.mark.expensive
def test_rerun_keeps_finished_shards_and_params_change_starts_over(tmp_path, http_server):
    base, routes = http_server
    routes["/a.jpg"] = (200, "image/jpeg", _encode(_photo(), "JPEG"), 0)
    urls = _urls_file(tmp_path, [f"{base}/a.jpg?{i}" for i in range(6)])
    out = tmp_path / "raw"
    params = DownloadParams(image_size=32, processes_count=1, thread_count=2, number_sample_per_shard=3,
                            allow_networks=LOOPBACK)
    download_run.run(params, urls, out)
    finished = (out / "00000.tar").stat().st_mtime_ns
    (out / "00001_stats.json").unlink()  # as if killed while writing the second shard
    summary = download_run.run(params, urls, out)
    assert summary["success"] == 6
    assert (out / "00000.tar").stat().st_mtime_ns == finished  # not downloaded again
    runs = [json.loads(line) for line in (out / "runs.jsonl").read_text().splitlines()]
    assert [(r["images"], r["shards"]) for r in runs] == [(6, 2), (3, 1)], "the redone shard is work done again"
    assert summary["images_per_s"] == round(9 / sum(r["seconds"] for r in runs), 2)
    idle = download_run.run(params, urls, out)  # every shard finished: nothing downloaded, the speed stays
    assert idle["working_runs"] == 2 and idle["images_per_s"] == summary["images_per_s"]

    summary = download_run.run(params.model_copy(update={"image_size": 24}), urls, out)
    records, members = _read_shards(out)
    assert summary["success"] == 6 and len(records) == 6
    assert {Image.open(io.BytesIO(b)).size for n, b in members.items() if n.endswith(".jpg")} == {(24, 24)}


def test_extra_options_are_checked_against_img2dataset():
    assert download_run.img2dataset_options(DownloadParams(extra={"compute_hash": "md5"}))["compute_hash"] == "md5"
    with pytest.raises(ParamsError, match="download.extra.thread_cnt: not an img2dataset option"):
        download_run.img2dataset_options(DownloadParams(extra={"thread_cnt": 3}))
    with pytest.raises(ParamsError, match="download.extra.output_folder: set by the pipeline"):
        download_run.img2dataset_options(DownloadParams(extra={"output_folder": "x"}))


@pytest.mark.parametrize("message, name", [
    ("HTTP Error 404: Not Found", "http_404"),
    ("HTTP Error 503: Service Unavailable", "http_503"),
    ("<urlopen error [Errno 111] Connection refused>", "connection_refused"),
    ("The read operation timed out", "timeout"),
    ("<urlopen error [Errno -2] Name or service not known>", "dns_error"),
    ("something new", "other"),
    (None, "other"),
])
def test_failure_classes(message, name):
    assert download_run.failure_class(message) == name


def _nine_urls_one_gone(tmp_path, http_server, distributor):
    """8 images and a 404 through a distributor: 3 shards of 3, the failure counted by class."""
    base, routes = http_server
    routes["/a.jpg"] = (200, "image/jpeg", _encode(_photo(), "JPEG"), 0)
    urls = _urls_file(tmp_path, [f"{base}/a.jpg?{i}" for i in range(8)] + [f"{base}/gone.jpg"])
    params = DownloadParams(image_size=32, processes_count=2, thread_count=2, number_sample_per_shard=3,
                            distributor=distributor, allow_networks=LOOPBACK)
    summary = download_run.run(params, urls, tmp_path / "raw")
    assert summary["success"] == 8 and summary["failures"] == {"http_404": 1} and summary["shards"] == 3
    return summary


@pytest.mark.slow
def test_pyspark_local_mode(tmp_path, http_server):
    _nine_urls_one_gone(tmp_path, http_server, "pyspark")


def test_ray_address_that_does_not_answer_fails_fast(tmp_path, http_server, monkeypatch):
    """RAY_ADDRESS pointing at a closed port is named at once, before img2dataset starts (Ray would retry)."""
    from pipeline.caption.fleet import free_port
    from core.ray_session import RayClusterError

    monkeypatch.setenv("RAY_ADDRESS", f"127.0.0.1:{free_port('127.0.0.1')}")
    with pytest.raises(RayClusterError, match=r"RAY_ADDRESS: no Ray cluster reachable"):
        _nine_urls_one_gone(tmp_path, http_server, "ray")
    assert not (tmp_path / "raw").exists()


@pytest.mark.slow
def test_ray_local_instance(tmp_path, http_server, monkeypatch):
    """Without RAY_ADDRESS the stage starts a local Ray instance, downloads each shard as a Ray task on it, stops it."""
    import ray

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    tasks = _nine_urls_one_gone(tmp_path, http_server, "ray")["ray"]["tasks_per_node"]
    assert len(tasks) == 1 and sum(tasks.values()) == 3, "one task per shard, on the one node"
    assert not ray.is_initialized(), "the local instance is stopped afterwards"


@pytest.mark.expensive
def test_same_urls_same_bytes(tmp_path, http_server):
    """Two downloads of one list whose answers come back out of order give the same files (but for the timings,
    which .dvcignore keeps out of the hash): members and rows in key order, no clock in the tars."""
    base, routes = http_server
    rng = np.random.default_rng(1)
    jpeg = _encode(_photo(), "JPEG")
    for i in range(24):
        routes[f"/{i}.jpg"] = (200, "image/jpeg", jpeg, float(rng.uniform(0, 0.3)))
    urls = _urls_file(tmp_path, [f"{base}/{i}.jpg" for i in range(24)] + [f"{base}/gone.jpg"])
    params = DownloadParams(image_size=32, processes_count=2, thread_count=8, number_sample_per_shard=10,
                            allow_networks=LOOPBACK)
    folders = [tmp_path / "first", tmp_path / "second"]
    for out in folders:
        download_run.run(params, urls, out)
    first, second = (raw_digests(out) for out in folders)
    assert first == second and len(first) == 3 * 2 + 1  # tar and parquet per shard + fingerprint.txt
    with tarfile.open(folders[0] / "00000.tar") as archive:
        members = archive.getmembers()
    assert [m.name for m in members] == sorted(m.name for m in members) and {m.mtime for m in members} == {0}
    keys = list(pd.read_parquet(folders[0] / "00002.parquet")["key"])
    assert keys == sorted(keys)
    stats = json.loads((folders[0] / "00001_stats.json").read_text())
    assert stats["canonical"] and stats["end_time"] >= stats["start_time"]  # img2dataset's progress log reads them

    # Killed between writing a shard and settling it: the next run settles it, and leaves no temporary file.
    records = pq.read_table(folders[1] / "00000.parquet")
    pq.write_table(records.take(list(range(records.num_rows))[::-1]), folders[1] / "00000.parquet")
    stats = json.loads((folders[1] / "00000_stats.json").read_text())
    (folders[1] / "00000_stats.json").write_text(json.dumps({k: v for k, v in stats.items() if k != "canonical"}))
    (folders[1] / ".00000.tar.1.abc.tmp").write_bytes(b"half")
    assert raw_digests(folders[1]) != first
    download_run.run(params, urls, folders[1])
    assert raw_digests(folders[1]) == first


def test_timings_are_not_in_the_hash():
    """DVC hashes data/raw and data/captions without their timings (real `dvc check-ignore`), as `raw_digests`
    assumes."""
    paths = ["data/raw/runs.jsonl", "data/raw/00000_stats.json", "data/captions/_runs.json", "data/raw/00000.tar",
             "data/raw/00000.parquet", "data/raw/fingerprint.txt"]
    ignored = subprocess.run([sys.executable, "-m", "dvc", "check-ignore", *paths], cwd=REPO, capture_output=True,
                             text=True)
    assert ignored.stdout.split() == paths[:3]


@pytest.mark.expensive
def test_a_killed_worker_stops_the_stage_and_the_rerun_resumes(tmp_path, http_server, capsys):
    """img2dataset's own pool would wait forever for the shard of a worker killed with SIGKILL; ours fails at once
    (WorkerDied: one line, exit 1), stops img2dataset's logger process, and the rerun downloads what is missing."""
    base, routes = http_server
    jpeg = _encode(_photo(), "JPEG")
    routes["/a.jpg"] = (200, "image/jpeg", jpeg, 0)
    routes["/slow.jpg"] = (200, "image/jpeg", jpeg, 2)
    urls = _urls_file(tmp_path, [f"{base}/a.jpg?{i}" for i in range(4)] + [f"{base}/slow.jpg?{i}" for i in range(4)])
    params = DownloadParams(image_size=32, processes_count=2, thread_count=2, number_sample_per_shard=2,
                            timeout=10, allow_networks=LOOPBACK)
    killed = []

    def kill_a_worker():
        while not killed:
            workers = [child for child in multiprocessing.active_children() if type(child).__name__ != "LoggerProcess"]
            if workers and any(path.startswith("/slow.jpg") for path in routes.seen):
                os.kill(workers[0].pid, signal.SIGKILL)
                killed.append(workers[0].pid)
            time.sleep(0.05)

    killer = threading.Thread(target=kill_a_worker, daemon=True)
    killer.start()
    with pytest.raises(SystemExit) as exited:
        with exit_on_params_error():  # as the stage runs it
            download_run.run(params, urls, tmp_path / "raw")
    killer.join()
    err = capsys.readouterr().err
    assert exited.value.code == 1 and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("error: download: a worker process died")
    assert not multiprocessing.active_children()
    summary = download_run.run(params, urls, tmp_path / "raw")
    assert summary["success"] == 8 and summary["shards"] == 4
