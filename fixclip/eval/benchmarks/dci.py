"""DCI, Densely Captioned Images (Urbanek et al. 2024): ``densely_captioned_images/annotations/*.json`` with the
SA-1B photos in ``densely_captioned_images/photos/``; 7,805 images."""
import json
from pathlib import Path
from typing import ClassVar, Literal

from .entry import Entry
from .types import RetrievalBenchmark

DEFAULT_FIELDS = ("short_caption", "extra_caption")


def load(root: str, fields: tuple[str, ...] | list[str] = DEFAULT_FIELDS) -> RetrievalBenchmark:
    """Every annotation (sorted by file name); the caption joins ``fields`` with spaces (empty ones skipped)."""
    annotations = sorted(Path(root, "annotations").glob("*.json"))
    if not annotations:
        raise FileNotFoundError(f"no annotations/*.json under {root}")
    images, captions = [], []
    for path in annotations:
        record = json.loads(path.read_text(encoding="utf-8"))
        images.append(Path(root, "photos", record["image"]))
        captions.append([" ".join(str(record[f]).strip() for f in fields if str(record.get(f) or "").strip())])
    return RetrievalBenchmark(images, captions)


class DCIEntry(Entry):
    kind: Literal["dci"]
    """The benchmark's adapter (fixclip/eval/benchmarks/README.md)."""
    adapter = load
    root: str
    """densely_captioned_images/ (annotations/, photos/)"""
    fields: list[str] = ["short_caption", "extra_caption"]
    """Annotation fields whose texts are joined into the description."""
    path_keys: ClassVar[tuple[str, ...]] = ("root",)
