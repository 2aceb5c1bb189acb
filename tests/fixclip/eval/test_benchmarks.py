"""Each adapter on a tiny fixture in its benchmark's published on-disk layout."""
import json
from pathlib import Path

import pytest
from PIL import Image

from fixclip.eval.benchmarks import BENCHMARKS, ClassificationBenchmark, RetrievalBenchmark


def _image(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (200, 10, 10)).save(path)
    return path


def _jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_urban1k_pairs_caption_and_image_by_number(tmp_path):
    for n in (1, 2, 10):
        _image(tmp_path / "image" / f"{n}.jpg")
        (tmp_path / "caption").mkdir(exist_ok=True)
        (tmp_path / "caption" / f"{n}.txt").write_text(f"caption {n}\n")
    bench = BENCHMARKS["urban1k"].adapter(root=str(tmp_path))
    assert [p.name for p in bench.images] == ["1.jpg", "2.jpg", "10.jpg"]
    assert bench.captions == [["caption 1"], ["caption 2"], ["caption 10"]]
    (tmp_path / "image" / "10.jpg").unlink()
    with pytest.raises(FileNotFoundError, match="10.jpg"):
        BENCHMARKS["urban1k"].adapter(root=str(tmp_path))


def _share_entry(i: int, image: str) -> dict:
    return {"id": str(i), "image": image, "conversations": [
        {"from": "human", "value": "<image>\nWhat is in the photo?"}, {"from": "gpt", "value": f"long caption {i}"}]}


def test_sharegpt4v_takes_the_first_sam_entries_in_file_order(tmp_path):
    entries = [_share_entry(0, "coco/train2017/000000000009.jpg")]
    entries += [_share_entry(i, f"sam/images/sa_{i}.jpg") for i in range(1, 1003)]
    for entry in entries[1:]:
        _image(tmp_path / "data" / entry["image"])
    (tmp_path / "share-captioner_coco_lcs_sam_1246k_1107.json").write_text(json.dumps(entries))
    bench = BENCHMARKS["sharegpt4v"].adapter(json_path=str(tmp_path / "share-captioner_coco_lcs_sam_1246k_1107.json"),
                                   image_root=str(tmp_path / "data"), subset="first_1k")
    assert len(bench.images) == 1000
    assert bench.images[0] == tmp_path / "data/sam/images/sa_1.jpg" and bench.captions[0] == ["long caption 1"]
    assert bench.images[-1].name == "sa_1000.jpg"
    with pytest.raises(ValueError, match="only 1002 SAM entries"):
        BENCHMARKS["sharegpt4v"].adapter(json_path=str(tmp_path / "share-captioner_coco_lcs_sam_1246k_1107.json"),
                               image_root=str(tmp_path / "data"), subset="first_10k")


def test_dci_joins_short_and_extra_caption(tmp_path):
    root = tmp_path / "densely_captioned_images"
    for i, extra in enumerate(["A lake under hills.", ""]):
        _image(root / "photos" / f"sa_{i}.jpg")
        (root / "annotations").mkdir(parents=True, exist_ok=True)
        (root / "annotations" / f"sa_{i}.json").write_text(json.dumps(
            {"image": f"sa_{i}.jpg", "short_caption": f"Photo {i}.", "extra_caption": extra, "mask_data": {}}))
    bench = BENCHMARKS["dci"].adapter(root=str(root), fields=["short_caption", "extra_caption"])
    assert bench.captions == [["Photo 0. A lake under hills."], ["Photo 1."]]
    assert bench.images == [root / "photos/sa_0.jpg", root / "photos/sa_1.jpg"]


def test_iiw_reads_image_key_and_description(tmp_path):
    _jsonl(tmp_path / "IIW-400/data.jsonl", [{"image/key": "aar_test_04600", "IIW": "A red door.", "IIW-P5B": "x"}])
    _image(tmp_path / "images_aar/aar_test_04600.jpg")
    bench = BENCHMARKS["iiw"].adapter(jsonl=str(tmp_path / "IIW-400/data.jsonl"), image_root=str(tmp_path / "images_aar"))
    assert bench.images == [tmp_path / "images_aar/aar_test_04600.jpg"] and bench.captions == [["A red door."]]


def test_docci_keeps_the_requested_split(tmp_path):
    rows = [{"example_id": f"{s}_{i}", "split": s, "image_file": f"{s}_{i}.jpg", "description": f"{s} {i}"}
            for s in ("train", "test", "qual_dev") for i in range(2)]
    _jsonl(tmp_path / "docci_descriptions.jsonlines", rows)
    for row in rows:
        _image(tmp_path / "images" / row["image_file"])
    bench = BENCHMARKS["docci"].adapter(root=str(tmp_path), split="test")
    assert [p.name for p in bench.images] == ["test_0.jpg", "test_1.jpg"]
    assert bench.captions == [["test 0"], ["test 1"]]


def _karpathy(images: list[dict]) -> dict:
    return {"images": images, "dataset": "coco"}


def test_coco_karpathy_test_split_with_five_captions(tmp_path):
    images = [{"filepath": "val2014", "filename": f"COCO_val2014_{i:012d}.jpg", "cocoid": i, "split": split,
               "sentences": [{"raw": f"image {i} caption {j} ", "tokens": []} for j in range(6)]}
              for i, split in enumerate(["test", "train", "test", "restval"])]
    (tmp_path / "dataset_coco.json").write_text(json.dumps(_karpathy(images)))
    for image in images:
        _image(tmp_path / "images" / image["filepath"] / image["filename"])
    bench = BENCHMARKS["coco_karpathy"].adapter(annotations=str(tmp_path / "dataset_coco.json"),
                                      image_root=str(tmp_path / "images"), split="test", captions_per_image=5)
    assert bench.images == [tmp_path / "images/val2014/COCO_val2014_000000000000.jpg",
                            tmp_path / "images/val2014/COCO_val2014_000000000002.jpg"]
    assert bench.captions[1] == [f"image 2 caption {j}" for j in range(5)]


def test_flickr30k_karpathy_images_have_no_filepath(tmp_path):
    images = [{"filename": f"{1000 + i}.jpg", "imgid": i, "split": "test",
               "sentences": [{"raw": f"f{i} c{j}"} for j in range(5)]} for i in range(2)]
    (tmp_path / "dataset_flickr30k.json").write_text(json.dumps(_karpathy(images)))
    for image in images:
        _image(tmp_path / "flickr30k-images" / image["filename"])
    bench = BENCHMARKS["flickr30k_karpathy"].adapter(annotations=str(tmp_path / "dataset_flickr30k.json"),
                                           image_root=str(tmp_path / "flickr30k-images"))
    assert bench.images[1] == tmp_path / "flickr30k-images/1001.jpg" and len(bench.captions[1]) == 5


def test_coco_val2017_groups_annotations_by_image(tmp_path):
    data = {"images": [{"id": 139, "file_name": "000000000139.jpg"}, {"id": 285, "file_name": "000000000285.jpg"}],
            "annotations": [{"id": k, "image_id": 285 if k % 2 else 139, "caption": f"c{k}"} for k in range(13)]}
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations/captions_val2017.json").write_text(json.dumps(data))
    for image in data["images"]:
        _image(tmp_path / "val2017" / image["file_name"])
    bench = BENCHMARKS["coco_val2017"].adapter(annotations=str(tmp_path / "annotations/captions_val2017.json"),
                                     image_root=str(tmp_path / "val2017"), captions_per_image=5)
    assert bench.captions == [["c0", "c2", "c4", "c6", "c8"], ["c1", "c3", "c5", "c7", "c9"]]


def test_imagefolder_with_classnames_and_templates(tmp_path):
    for wnid in ("n01440764", "n01443537"):
        for i in range(2):
            _image(tmp_path / "val" / wnid / f"ILSVRC2012_val_{wnid}_{i}.JPEG")
    (tmp_path / "val" / "n01440764" / "README.txt").write_text("not an image")
    (tmp_path / "names.json").write_text(json.dumps({"n01440764": "tench", "n01443537": "goldfish"}))
    bench = BENCHMARKS["imagefolder"].adapter(root=str(tmp_path / "val"), templates=["a photo of a {c}.", "a {c}."],
                                    classnames=str(tmp_path / "names.json"))
    assert isinstance(bench, ClassificationBenchmark)
    assert bench.labels == [0, 0, 1, 1] and bench.classnames == ["tench", "goldfish"]
    assert bench.prompts()[1] == ["a photo of a goldfish.", "a goldfish."]
    (tmp_path / "names.txt").write_text("tench\ngoldfish\n")
    assert BENCHMARKS["imagefolder"].adapter(root=str(tmp_path / "val"), templates=["{c}"],
                                   classnames=str(tmp_path / "names.txt")).classnames == ["tench", "goldfish"]


def test_toy_tasks_read_the_generated_layout(tmp_path):
    _image(tmp_path / "images/a.png")
    _image(tmp_path / "images/b.png")
    _jsonl(tmp_path / "retrieval.jsonl", [{"image": "images/a.png", "long_caption": "L", "short_caption": "S"}])
    _jsonl(tmp_path / "layout.jsonl", [{"image": "images/b.png", "long_caption": "Swapped"}])
    _jsonl(tmp_path / "short_scenes.jsonl", [{"image": "images/a.png", "caption": "One"}])
    _jsonl(tmp_path / "classification.jsonl", [{"image": "images/b.png", "label": "red star", "colour": "red",
                                                "shape": "star"}])
    (tmp_path / "classes.json").write_text(json.dumps({
        "classnames": ["red circle", "red star", "blue circle", "blue star"], "colours": ["red", "blue"],
        "shapes": ["circle", "star"], "templates": ["a photo of a {c}.", "a {c}."]}))
    long = BENCHMARKS["toy"].adapter(root=str(tmp_path), task="long_retrieval")
    assert isinstance(long, RetrievalBenchmark) and long.captions == [["L"]]
    assert BENCHMARKS["toy"].adapter(root=str(tmp_path), task="short_retrieval").captions == [["S"]]
    assert BENCHMARKS["toy"].adapter(root=str(tmp_path), task="layout_retrieval").captions == [["Swapped"]]
    assert BENCHMARKS["toy"].adapter(root=str(tmp_path), task="short_scene_retrieval").captions == [["One"]]
    zeroshot = BENCHMARKS["toy"].adapter(root=str(tmp_path), task="zeroshot")
    assert zeroshot.labels == [1] and zeroshot.images == [tmp_path / "images/b.png"]
    colour = BENCHMARKS["toy"].adapter(root=str(tmp_path), task="zeroshot_colour")
    assert colour.labels == [0] and colour.classnames == ["red", "blue"]
    assert colour.prompts()[1] == ["a photo of a blue circle.", "a photo of a blue star.", "a blue circle.",
                                   "a blue star."]
    shape = BENCHMARKS["toy"].adapter(root=str(tmp_path), task="zeroshot_shape")
    assert shape.labels == [1] and shape.prompts()[0] == ["a photo of a red circle.", "a photo of a blue circle.",
                                                          "a red circle.", "a blue circle."]
