"""The held-out toy benchmark: deterministic, disjoint from the training world, encoded like the training images,
and built so that the first 77 tokens of a long description do not identify its image."""
import io
import json

import numpy as np
import open_clip
import pytest
from PIL import Image

from pipeline.params.download import DownloadParams
from pipeline.params.evaluate import ToyBenchmarkParams
from pipeline.params.source import ToyWorldParams
from pipeline.toyworld.benchmark import HeldOutError, generate
from pipeline.toyworld.scenes import make_record

WORLD = ToyWorldParams()
DOWNLOAD = DownloadParams()
SMALL_TOY = ToyBenchmarkParams(num_images=24, num_layout_images=12, num_short_scene_images=30,
                               num_classification_images=16)


def _files(root):
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_toy_benchmark_is_deterministic_and_disjoint_from_the_training_world(tmp_path):
    generate(SMALL_TOY, WORLD, DOWNLOAD, tmp_path / "a")
    generate(SMALL_TOY, WORLD, DOWNLOAD, tmp_path / "b")
    first = _files(tmp_path / "a")
    assert first == _files(tmp_path / "b")
    assert len([name for name in first if name.endswith(".jpg")]) == 24 + 12 + 30 + 16

    rows = [json.loads(line) for line in (tmp_path / "a/retrieval.jsonl").read_text().splitlines()]
    training = [make_record(WORLD.seed, i, WORLD.image_size, WORLD.grid, WORLD.min_objects, WORLD.max_objects,
                            WORLD.textures) for i in range(200)]
    assert not {r["uid"] for r in rows} & {t.uid for t in training}
    assert not {r["scene"] for r in rows} & {t.scene_json for t in training}
    assert not {r["long_caption"] for r in rows} & {t.long_description for t in training}
    uids = [json.loads(line)["uid"] for name in ("retrieval", "layout", "short_scenes", "classification")
            for line in (tmp_path / f"a/{name}.jsonl").read_text().splitlines()]
    assert len(uids) == len(set(uids)) == 24 + 12 + 30 + 16
    assert all(len(r["long_caption"]) > len(r["short_caption"]) for r in rows)

    labels = [json.loads(line)["label"] for line in (tmp_path / "a/classification.jsonl").read_text().splitlines()]
    classes = json.loads((tmp_path / "a/classes.json").read_text())
    assert set(labels) <= set(classes["classnames"]) and len(classes["classnames"]) == 48

    with pytest.raises(HeldOutError, match="not held out"):
        generate(SMALL_TOY.model_copy(update={"seed": WORLD.seed}), WORLD, DOWNLOAD, tmp_path / "c")




def test_twins_differ_only_in_the_last_described_object_and_only_beyond_77_tokens(tmp_path):
    stats = generate(SMALL_TOY, WORLD, DOWNLOAD, tmp_path)
    rows = [json.loads(line) for line in (tmp_path / "retrieval.jsonl").read_text().splitlines()]
    tokenizer = open_clip.get_tokenizer("ViT-B-32")
    for first, second in zip(rows[0::2], rows[1::2]):
        a, b = json.loads(first["scene"]), json.loads(second["scene"])
        assert len(a["objects"]) >= SMALL_TOY.min_objects
        assert a["objects"][:-1] == b["objects"][:-1] and a["background"] == b["background"]
        last_a, last_b = a["objects"][-1], b["objects"][-1]
        changed = {k for k in last_a if last_a[k] != last_b[k]}
        assert changed in ({"colour"}, {"shape"})
        assert first["long_caption"] != second["long_caption"]
        assert (tokenizer([first["long_caption"]]) == tokenizer([second["long_caption"]])).all()
        pixels = [np.asarray(Image.open(tmp_path / r["image"]), dtype=int) for r in (first, second)]
        assert np.abs(pixels[0] - pixels[1]).max() > 0  # the twins' images differ ...
    assert stats["share_over_77_tokens"] == 1.0 and stats["share_twins_equal_in_first_77_tokens"] == 1.0


def test_images_are_encoded_like_the_downloaded_training_images(tmp_path):
    generate(SMALL_TOY, WORLD, DOWNLOAD, tmp_path)
    for path in sorted((tmp_path / "images").iterdir()):
        with Image.open(io.BytesIO(path.read_bytes())) as image:
            assert image.format == "JPEG" and image.size == (DOWNLOAD.image_size, DOWNLOAD.image_size)


def _rows(root, name):
    return [json.loads(line) for line in (root / f"{name}.jsonl").read_text().splitlines()]


def _looks(scene: dict) -> list[tuple]:
    """The scene's objects without their places."""
    return sorted((o["colour"], o["shape"], o["size"], o["texture"]) for o in scene["objects"])


def test_layout_twins_hold_the_same_objects_and_images_that_differ(tmp_path):
    stats = generate(SMALL_TOY, WORLD, DOWNLOAD, tmp_path)
    rows = _rows(tmp_path, "layout")
    assert len(rows) == 12 and stats["layout_pairs"] == 6
    for first, second in zip(rows[0::2], rows[1::2]):
        a, b = json.loads(first["scene"]), json.loads(second["scene"])
        assert len(a["objects"]) >= SMALL_TOY.min_objects
        assert _looks(a) == _looks(b)
        assert first["long_caption"] != second["long_caption"]
        pixels = [np.asarray(Image.open(tmp_path / r["image"]), dtype=int) for r in (first, second)]
        assert np.abs(pixels[0] - pixels[1]).max() > 0


def test_short_scenes_are_complete_distinct_and_within_77_tokens(tmp_path):
    stats = generate(SMALL_TOY, WORLD, DOWNLOAD, tmp_path)
    rows = _rows(tmp_path, "short_scenes")
    captions = [r["caption"] for r in rows]
    assert len(rows) == 30 and len(set(captions)) == 30
    assert all(1 <= len(json.loads(r["scene"])["objects"]) <= 2 for r in rows)
    assert stats["share_short_scenes_within_77_tokens"] == 1.0 and stats["short_scene_tokens_max"] <= 77


def test_classification_rows_name_colour_and_shape(tmp_path):
    generate(SMALL_TOY, WORLD, DOWNLOAD, tmp_path)
    for row in _rows(tmp_path, "classification"):
        obj = json.loads(row["scene"])["objects"][0]
        assert row["label"] == f"{row['colour']} {row['shape']}" and (row["colour"], row["shape"]) == (
            obj["colour"], obj["shape"])
    classes = json.loads((tmp_path / "classes.json").read_text())
    assert len(classes["colours"]) == 8 and len(classes["shapes"]) == 6
