"""`make gallery`: a run's data on one page that opens from disk, with every URL's fate counted, each caption's errors
against its toy scene marked, every dropped image by reason (a benchmark copy beside what it copies)."""
import io
import json
import tarfile

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pipeline.gallery import main
from pipeline.toyworld.captions import describe
from tests.browser import console_messages, drawn_share, need_chromium, outside_references
from tests.conftest import assert_user_error

SCENE = {"background": "beige", "grid": 3, "objects": [
    {"row": 0, "col": 0, "colour": "blue", "shape": "circle", "size": "small", "texture": "solid"},
    {"row": 2, "col": 1, "colour": "red", "shape": "star", "size": "large", "texture": "striped"}]}
RIGHT = describe(SCENE, "sentences")
WRONG = RIGHT.replace("blue circle", "green circle")
# uid: (raw status, shard fate, long caption)
SAMPLES = {"u0": ("success", "train", RIGHT), "u1": ("success", "train", WRONG), "u2": ("success", "val", RIGHT),
           "u3": ("success", "benchmark_duplicate", RIGHT), "u4": ("success", "no_caption", None),
           "u5": ("failed_to_download", None, None)}


def _jpeg(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "JPEG")
    return out.getvalue()


def _tar(path, members: dict[str, bytes]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


@pytest.fixture
def run_outputs(tmp_path, monkeypatch):
    """A run's outputs in the stages' layouts: 6 URLs, one failed download, two splits, two drops."""
    keys = {uid: f"{i:08d}" for i, uid in enumerate(SAMPLES)}
    (tmp_path / "data/raw").mkdir(parents=True)
    pd.DataFrame({"url": [f"file:data/toyworld/{u}.png" for u in SAMPLES]}).to_parquet(tmp_path / "data/urls.parquet")
    pd.DataFrame({"uid": list(SAMPLES), "key": list(keys.values()), "url": [f"file:{u}" for u in SAMPLES],
                  "status": [s[0] for s in SAMPLES.values()],
                  "error_message": [None if s[0] == "success" else "HTTP Error 404" for s in SAMPLES.values()]}
                 ).to_parquet(tmp_path / "data/raw/00000.parquet")
    _tar(tmp_path / "data/raw/00000.tar", {f"{keys[u]}.jpg": _jpeg(i) for i, u in enumerate(SAMPLES) if u != "u5"})
    (tmp_path / "data/captions").mkdir()
    captioned = [u for u, s in SAMPLES.items() if s[2]]
    pd.DataFrame({"key": [keys[u] for u in captioned], "caption_index": 0,
                  "caption": [SAMPLES[u][2] for u in captioned]}).to_parquet(tmp_path / "data/captions/00000.parquet")
    shards = {"train": "train/train-000000.tar", "val": "val/val-000000.tar"}
    rows = [u for u in SAMPLES if SAMPLES[u][1]]
    (tmp_path / "data/shards").mkdir()
    benchmark_image = tmp_path / "data/toy_benchmark/images/b0.jpg"
    benchmark_image.parent.mkdir(parents=True)
    benchmark_image.write_bytes(_jpeg(99))
    pd.DataFrame({"uid": rows, "key": [keys[u] for u in rows], "raw_shard": "00000",
                  "fate": [SAMPLES[u][1] for u in rows], "shard": [shards.get(SAMPLES[u][1]) for u in rows],
                  "benchmark": ["toy_zeroshot" if u == "u3" else None for u in rows],
                  "benchmark_item": ["data/toy_benchmark/images/b0.jpg" if u == "u3" else None for u in rows],
                  "benchmark_distance": [0.0612 if u == "u3" else None for u in rows]}
                 ).to_parquet(tmp_path / "data/shards/index.parquet")
    for split, shard in shards.items():
        members = {}
        for i, uid in enumerate(SAMPLES):
            if SAMPLES[uid][1] == split:
                members |= {f"{uid}.jpg": _jpeg(i), f"{uid}.long.txt": SAMPLES[uid][2].encode(),
                            f"{uid}.short.txt": b"small blue circle",
                            f"{uid}.json": json.dumps({"scene": SCENE}).encode()}
        _tar(tmp_path / "data/shards" / shard, members)
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics/caption.json").write_text(json.dumps({"quality": {"captions": 4, "colour": 0.875}}))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_the_page_counts_every_url_once_and_marks_what_a_caption_gets_wrong(run_outputs):
    main(["--out", "page.html"])
    page = (run_outputs / "page.html").read_text()
    assert "Every one of the 6 URLs has one fate." in page
    for fate, count in (("download: failed_to_download", 1), ("shard: train", 2), ("shard: val", 1),
                        ("shard: benchmark_duplicate", 1), ("shard: no_caption", 1)):
        assert f"<td>{fate}</td><td>{count}</td>" in page
    assert "train: 2 of 2 samples" in page and "val: 1 of 1 samples" in page
    assert page.count("caption right in every attribute") == 2  # u0 and u2; u1 calls the blue circle green
    assert "✗ top left: colour says green, is blue" in page
    assert "<td>colour</td><td>0.875</td>" in page
    assert "copies <code>data/toy_benchmark/images/b0.jpg</code> of toy_zeroshot (distance 0.0612)" in page
    assert "no_caption: 1 of 1" in page and "HTTP Error 404" in page
    assert page.count("<img ") == 3 + 2 + 1  # the samples, the two drops, the benchmark image
    assert "<script" not in page and outside_references(run_outputs / "page.html") == []


def test_counts_that_do_not_add_up_are_said(run_outputs):
    index = pd.read_parquet("data/shards/index.parquet")
    index[index["uid"] != "u4"].to_parquet("data/shards/index.parquet")
    main(["--out", "page.html"])
    assert "The counts do not add up: 5 fates for 6 URLs; 1 downloaded images without a shard fate." in (
        run_outputs / "page.html").read_text()


def test_the_sample_is_seeded(run_outputs):
    pages = []
    for seed in (0, 0, 1, 2, 3):
        main(["--out", "page.html", "--per-group", "1", "--seed", str(seed)])
        pages.append((run_outputs / "page.html").read_text())
    assert pages[0] == pages[1] and "train: 1 of 2 samples" in pages[0]
    assert len({page.count("caption right in every attribute") for page in pages}) == 2  # u0 in some, u1 in others


def test_the_page_renders_offline(run_outputs):
    need_chromium()
    main(["--out", "page.html"])
    assert console_messages(run_outputs / "page.html") == []
    assert drawn_share(run_outputs / "page.html", run_outputs / "shot.png", "1200,1600") > 0.05


@pytest.mark.parametrize("remove, names", [("data/shards/index.parquet", ["data/shards/index.parquet: not found",
                                                                           "run `dvc repro`"]),
                                            ("data/urls.parquet", ["data/urls.parquet: not found"])])
def test_without_a_run_it_is_a_one_line_user_error(remove, names, run_outputs, capsys):
    (run_outputs / remove).unlink()
    assert_user_error(capsys, lambda: main(["--out", "page.html"]), *names)
