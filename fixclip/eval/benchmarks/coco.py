"""COCO 2017 validation (5,000 images) from the official ``annotations/captions_val2017.json`` and ``val2017/``.

For the Karpathy 5k test split use ``karpathy.load`` with ``dataset_coco.json``."""
import json
from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field

from .entry import Entry
from .types import RetrievalBenchmark, require_file


def load(annotations: str, image_root: str, captions_per_image: int = 5) -> RetrievalBenchmark:
    """Images in the file's order, each with its first ``captions_per_image`` captions (annotation order)."""
    data = json.loads(require_file(Path(annotations), "COCO captions json").read_text(encoding="utf-8"))
    captions: dict[int, list[str]] = {image["id"]: [] for image in data["images"]}
    for annotation in data["annotations"]:
        captions[annotation["image_id"]].append(annotation["caption"].strip())
    return RetrievalBenchmark([Path(image_root, image["file_name"]) for image in data["images"]],
                              [captions[image["id"]][:captions_per_image] for image in data["images"]])


class CocoVal2017Entry(Entry):
    kind: Literal["coco_val2017"]
    """The benchmark's adapter (fixclip/eval/benchmarks/README.md)."""
    adapter = load
    annotations: str
    """annotations/captions_val2017.json"""
    image_root: str
    """val2017/"""
    captions_per_image: int = Field(5, ge=1)
    """Captions kept per image (the first ones)."""
    path_keys: ClassVar[tuple[str, ...]] = ("annotations", "image_root")
