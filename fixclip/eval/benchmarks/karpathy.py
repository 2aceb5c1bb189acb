"""Karpathy splits (Karpathy & Fei-Fei 2015), ``dataset_coco.json`` / ``dataset_flickr30k.json``:
``{"images": [{"filepath"?, "filename", "split", "sentences": [{"raw": ...}]}]}``. COCO's 5k test and Flickr30k's
1k test with five captions per image are the standard short-text retrieval protocol."""
import json
from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field

from .entry import Entry
from .types import RetrievalBenchmark, require_file


def load(annotations: str, image_root: str, split: str = "test", captions_per_image: int = 5) -> RetrievalBenchmark:
    """Images of ``split`` in file order, each with its first ``captions_per_image`` raw sentences.

    The image path is ``image_root/filepath/filename`` (COCO: filepath ``val2014``) or ``image_root/filename``
    (Flickr30k, which has no filepath)."""
    data = json.loads(require_file(Path(annotations), "Karpathy split json").read_text(encoding="utf-8"))
    chosen = [image for image in data["images"] if image["split"] == split]
    if not chosen:
        raise ValueError(f"{annotations}: no images in split {split!r}")
    return RetrievalBenchmark(
        [Path(image_root, image.get("filepath", ""), image["filename"]) for image in chosen],
        [[s["raw"].strip() for s in image["sentences"][:captions_per_image]] for image in chosen],
    )


class KarpathyEntry(Entry):
    kind: Literal["coco_karpathy", "flickr30k_karpathy"]
    """The benchmark's adapter (fixclip/eval/benchmarks/README.md)."""
    adapter = load
    annotations: str
    """dataset_coco.json / dataset_flickr30k.json"""
    image_root: str
    """COCO: folder holding val2014/; Flickr30k: flickr30k-images/"""
    split: Literal["train", "restval", "val", "test"] = "test"
    """The Karpathy split scored."""
    captions_per_image: int = Field(5, ge=1)
    """Captions kept per image (the first ones)."""
    path_keys: ClassVar[tuple[str, ...]] = ("annotations", "image_root")
