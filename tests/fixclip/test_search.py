"""`python -m fixclip search`: long-text search over image files, folders and webdataset shards, as a table and an
offline HTML page; its bad inputs are one-line user errors."""
import subprocess
import sys

import numpy as np
import pytest
import webdataset as wds

from fixclip.__main__ import main
from fixclip.model_folder import save_model_folder
from tests.browser import console_messages, drawn_share, need_chromium, outside_references
from tests.conftest import REPO, assert_user_error
from tests.fixclip.export.conftest import trained_like_model
from tests.fixclip.export.test_export import _image_files
from tests.fixclip.helpers import fixclip_here
from tests.stages.test_evaluate import BASE_CONFIG

QUERY = "a small red circle in the upper left cell next to a large blue square"
SIZES = tuple((64, 64) for _ in range(7))


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("model")
    save_model_folder(trained_like_model(), BASE_CONFIG, folder)
    return folder


@pytest.fixture
def images(tmp_path):
    """A folder of 7 images, and the same images as two webdataset shards with a caption each."""
    (tmp_path / "images").mkdir()
    files = _image_files(tmp_path / "images", SIZES)
    (tmp_path / "shards").mkdir()
    for shard, part in enumerate((files[:4], files[4:])):
        with wds.TarWriter(str(tmp_path / "shards" / f"train-{shard:06d}.tar")) as sink:
            for path in part:
                sink.write({"__key__": path.stem, "png": path.read_bytes(), "long.txt": f"caption of {path.stem}"})
    return tmp_path


def _search(*args, check=True):
    """The real `python -m fixclip search` (once; the other calls run in this process: fixclip_here)."""
    return subprocess.run([sys.executable, "-m", "fixclip", "search", *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, check=check)


def _table(stdout: str) -> list[list[str]]:
    lines = stdout.splitlines()
    assert lines[0].split("\t") == ["rank", "score", "image", "caption"]
    return [line.split("\t") for line in lines[1:]]


@pytest.mark.expensive
def test_search_ranks_like_score_and_reads_shards_like_files(model_folder, images, capsys):
    query = images / "query.txt"
    query.write_text(QUERY + "\n")
    scored = fixclip_here(capsys, "score", model_folder, "--images", images / "images", "--texts", query).out
    expected = sorted(((float(row.split("\t")[1]), row.split("\t")[0]) for row in scored.splitlines()[1:]),
                      reverse=True)[:3]

    from_files = _table(_search(model_folder, "--images", images / "images", QUERY, "--top-k", 3).stdout)
    assert [row[0] for row in from_files] == ["1", "2", "3"]
    assert [row[2] for row in from_files] == [name for _, name in expected]
    np.testing.assert_allclose([float(row[1]) for row in from_files], [s for s, _ in expected], atol=1e-4)

    from_shards = _table(fixclip_here(capsys, "search", model_folder, QUERY, "--images", images / "shards",
                                      "--top-k", 3).out)
    both = _table(fixclip_here(capsys, "search", model_folder, QUERY, "--images", images / "shards", "--images",
                               images / "images", "--top-k", 6).out)
    assert [row[1] for row in both][::2] == [row[1] for row in from_files]  # each image twice: file and sample
    assert [row[1] for row in from_shards] == [row[1] for row in from_files]
    names = [row[2].rsplit("#", 1)[1] for row in from_shards]
    assert names == [row[2].rsplit("/", 1)[1].removesuffix(".png") for row in from_files]
    assert [row[3] for row in from_shards] == [f"caption of {name}" for name in names]


def test_search_counts_and_names_what_it_cannot_decode(model_folder, images, capsys):
    (images / "images" / "broken.png").write_bytes(b"not an image")
    result = fixclip_here(capsys, "search", model_folder, QUERY, "--images", images / "images", "--top-k", 10)
    assert len(_table(result.out)) == len(SIZES)
    assert "1 images could not be decoded and are not ranked: " in result.err and "broken.png" in result.err
    assert f"{len(SIZES)} best of {len(SIZES)} images" in result.err


def test_a_query_past_the_context_is_announced_and_its_start_searched(model_folder, images, capsys):
    long_query = " and ".join([QUERY] * 20)
    result = fixclip_here(capsys, "search", model_folder, long_query, "--images", images / "images", "--top-k", 2)
    assert "the model reads 248 tokens and drops the rest: the query 1 has" in result.err
    assert len(_table(result.out)) == 2


def test_the_results_page_renders_offline(model_folder, images, capsys):
    need_chromium()
    page = images / "results.html"
    fixclip_here(capsys, "search", model_folder, QUERY, "--images", images / "shards", "--top-k", 4, "--html", page)
    text = page.read_text()
    assert "<script" not in text and text.count("<img ") == 4 and "caption of image_" in text
    assert outside_references(page) == [] and console_messages(page) == []
    assert drawn_share(page, images / "shot.png") > 0.05


@pytest.mark.parametrize("case, names", [
    ("folder_without_images", ["--images ", "notes: no images (.jpg", "or webdataset shards (.tar)"]),
    ("missing_path", ["argument --images: ", "nowhere: no such file or folder"]),
    ("query_taken_for_a_path", ["argument --images: ", "xxxxx...: not a path (File name too long)"]),
    ("empty_query", ["the query is empty"]),
    ("zero_top_k", ["argument --top-k: 0: not a whole number >= 1"]),
    ("html_folder_missing", ["--html: ", "absent: no such folder"]),
    ("corrupt_shard", ["cut.tar: not a readable webdataset shard"]),
    ("not_a_model", ["notes: no model here"]),
])
def test_search_user_errors(case, names, model_folder, images, capsys):
    (images / "notes").mkdir()
    (images / "notes" / "readme.txt").write_text("no images here\n")
    (images / "bad").mkdir()
    (images / "bad" / "cut.tar").write_bytes((images / "shards" / "train-000000.tar").read_bytes()[:700])
    argv = {
        "folder_without_images": [model_folder, QUERY, "--images", images / "notes"],
        "missing_path": [model_folder, QUERY, "--images", images / "nowhere"],
        "query_taken_for_a_path": [model_folder, "--images", "x" * 300, QUERY],
        "empty_query": [model_folder, "  ", "--images", images / "images"],
        "zero_top_k": [model_folder, QUERY, "--images", images / "images", "--top-k", "0"],
        "html_folder_missing": [model_folder, QUERY, "--images", images / "images", "--html", images / "absent" / "p"],
        "corrupt_shard": [model_folder, QUERY, "--images", images / "bad"],
        "not_a_model": [images / "notes", QUERY, "--images", images / "images"],
    }[case]
    assert_user_error(capsys, lambda: main(["search", *map(str, argv)]), *names)
