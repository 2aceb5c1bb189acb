"""Real `dvc repro` in a temporary git repository: outputs, caching, and which stages a params change reruns."""
import io
import json
import tarfile

import pytest
import yaml
from PIL import Image

from tests.conftest import run

pytestmark = pytest.mark.slow


def _shrink(root):
    """The embedded default, made small enough for a test."""
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["source"]["toyworld"]["num_images"] = 40
    params["download"].update(number_sample_per_shard=16, processes_count=1, thread_count=4)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam", "small"], root)


def _ran(output: str) -> set[str]:
    return {line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage '")}


def _image_sizes(raw):
    sizes = set()
    for tar in raw.glob("*.tar"):
        with tarfile.open(tar) as archive:
            for member in archive.getmembers():
                if member.name.endswith(".jpg"):
                    sizes.add(Image.open(io.BytesIO(archive.extractfile(member).read())).size)
    return sizes


def test_repro_caches_and_reruns_only_what_changed(repo_copy):
    _shrink(repo_copy)
    first = run(["dvc", "repro"], repo_copy)
    assert _ran(first.stdout) == {"source", "download"}
    assert (repo_copy / "data/urls.parquet").is_file()
    metrics = json.loads((repo_copy / "metrics/download.json").read_text())
    assert metrics["urls"] == 40 == metrics["success"] + sum(metrics["failures"].values())
    assert metrics["shards"] == 3 and len(list((repo_copy / "data/raw").glob("*.tar"))) == 3
    assert _image_sizes(repo_copy / "data/raw") == {(64, 64)}
    run(["git", "add", "-A"], repo_copy)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "run"], repo_copy)

    again = run(["dvc", "repro"], repo_copy)
    assert _ran(again.stdout) == set()
    assert "Data and pipelines are up to date." in again.stdout

    experiment = run(["dvc", "exp", "run", "-S", "download.image_size=48"], repo_copy)
    assert _ran(experiment.stdout) == {"download"}
    assert _image_sizes(repo_copy / "data/raw") == {(48, 48)}
    shown = json.loads(run(["dvc", "metrics", "show", "--json"], repo_copy).stdout)
    assert shown[""]["data"]["metrics/download.json"]["data"]["success"] == 40


def test_bad_params_fail_repro_naming_the_key(repo_copy):
    params = yaml.safe_load((repo_copy / "params.yaml").read_text())
    params["download"]["thread_count"] = "many"
    (repo_copy / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    result = run(["dvc", "repro"], repo_copy, check=False)
    assert result.returncode != 0
    assert "download.thread_count: expected int, got 'many'" in result.stderr + result.stdout
    assert not (repo_copy / "data/urls.parquet").exists()
