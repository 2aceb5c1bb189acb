"""The benchmarks stage and `python -m pipeline.decontaminate`, run as a user runs them."""
import os
import subprocess
import sys

import numpy as np
import pytest
import yaml
from PIL import Image

from pipeline.decontaminate.copies import COPIES
from pipeline.paths import stage_command
from tests.conftest import REPO, file_digests, full_params, stage_env
from tests.pipeline.decontaminate.test_lookup import fingerprints, photo

pytest.importorskip("skimage.data")


def _run(args: list[str], cwd) -> subprocess.CompletedProcess:
    env = {**stage_env(), "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", *args], cwd=cwd, env=env, capture_output=True, text=True)


@pytest.mark.expensive
def test_an_unreadable_benchmark_image_is_named_and_no_fingerprint_written(tmp_path):
    classes = tmp_path / "data/benchmarks/shapes"
    for name in ("cat", "dog"):
        (classes / name).mkdir(parents=True)
        photo("chelsea").save(classes / name / "good.jpg")
    (classes / "dog/broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    params = full_params({"evaluate": {"benchmarks": [{"name": "pets", "kind": "imagefolder", "root": str(classes)}]}})
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    result = _run(stage_command("benchmarks")[2:], tmp_path)
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(f"error: {classes / 'dog/broken.jpg'}: benchmark image cannot "
                                                     f"be read")
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "data/benchmark_fingerprints").exists()


@pytest.mark.expensive
def test_the_stage_fingerprints_each_distinct_image_once_and_counts_per_benchmark(tmp_path):
    classes = tmp_path / "data/benchmarks/shapes"
    for name in ("cat", "rocket"):
        (classes / name).mkdir(parents=True)
        photo("chelsea" if name == "cat" else name).save(classes / name / "a.png")
    entry = {"kind": "imagefolder", "root": str(classes)}
    params = full_params({"evaluate": {"benchmarks": [{"name": "one", **entry}, {"name": "two", **entry}]}})
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    result = _run(stage_command("benchmarks")[2:], tmp_path)
    assert result.returncode == 0, result.stderr
    metrics = yaml.safe_load((tmp_path / "metrics/benchmarks.json").read_text())
    assert metrics == {"images": 2, "images_per_benchmark": {"one": 2, "two": 2}}
    assert not any((tmp_path / "data/toy_benchmark").iterdir())  # no toy benchmark listed: none rendered


@pytest.mark.expensive
def test_the_checker_lists_copies_of_benchmark_images_in_a_folder(tmp_path):
    names = ["astronaut", "coffee", "rocket"]
    fingerprints(tmp_path / "prints", names, [photo(name) for name in names])
    folder = tmp_path / "to_check/nested"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for kind in ("crop 10%", "greyscale", "jpeg 30"):
        data, suffix = COPIES[kind](photo("coffee"), rng)
        (folder / f"coffee {kind}.{suffix}").write_bytes(data)
    photo("camera").save(folder / "camera.png")
    (folder / "notes.jpg").write_bytes(b"not an image")
    result = _run(["pipeline.decontaminate", "--images", str(tmp_path / "to_check"), "--fingerprints",
                   str(tmp_path / "prints"), "--out", str(tmp_path / "matches.csv")], tmp_path)
    assert result.returncode == 1, result.stderr
    lines = result.stdout.strip().splitlines()
    assert sorted(line.split(": copy of ")[0] for line in lines[:-1]) == sorted(
        str(folder / f"coffee {kind}.{suffix}") for kind, suffix in (
            ("crop 10%", "jpg"), ("greyscale", "jpg"), ("jpeg 30", "jpg")))
    assert all(" copy of coffee (bench)" in line for line in lines[:-1])
    assert lines[-1] == ("decontaminate: 5 images checked against 3 benchmark images: 3 copies (bench 3), "
                         "1 unreadable")
    assert len((tmp_path / "matches.csv").read_text().splitlines()) == 4

    os.remove(folder / "camera.png")
    for copy in folder.glob("coffee*"):
        copy.unlink()
    photo("camera").save(folder / "camera.png")
    clean = _run(["pipeline.decontaminate", "--images", str(tmp_path / "to_check"), "--fingerprints",
                  str(tmp_path / "prints")], tmp_path)
    assert clean.returncode == 0 and "0 copies" in clean.stdout


def test_the_checker_names_a_missing_fingerprint_folder(tmp_path):
    result = _run(["pipeline.decontaminate", "--images", str(tmp_path), "--fingerprints", str(tmp_path / "none")],
                  tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip() == (f"error: {tmp_path / 'none'}: no benchmark fingerprints here ([Errno 2] No such "
                                     f"file or directory: '{tmp_path / 'none/items.parquet'}'); run `dvc repro "
                                     f"benchmarks`")


@pytest.mark.expensive
def test_two_fingerprint_builds_give_the_same_bytes(tmp_path):
    """Same params, same bytes: the benchmarks stage run from scratch in two folders (different paths, one with
    OpenCV and OpenMP on one thread) writes identical toy benchmarks and fingerprints."""
    small = {"num_images": 20, "num_layout_images": 10, "num_short_scene_images": 10, "num_classification_images": 48}
    params = yaml.safe_dump(full_params({"evaluate": {"toy": small}}))
    digests = []
    for folder, threads in ((tmp_path / "a", {}), (tmp_path / "second" / "b", {"OMP_NUM_THREADS": "1",
                                                                                 "OPENCV_FOR_THREADS_NUM": "1"})):
        folder.mkdir(parents=True)
        (folder / "params.yaml").write_text(params)
        env = {**stage_env(), "PYTHONPATH": str(REPO), **threads}
        result = subprocess.run(stage_command("benchmarks"), cwd=folder, env=env,
                                capture_output=True, text=True)
        assert result.returncode == 0, result.stderr[-3000:]
        digests.append({name: file_digests(folder / "data" / name)
                        for name in ("benchmark_fingerprints", "toy_benchmark", "toy_benchmark_dev")})
    assert len(digests[0]["benchmark_fingerprints"]) == 4 and digests[0]["toy_benchmark"]
    assert digests[0] == digests[1]
