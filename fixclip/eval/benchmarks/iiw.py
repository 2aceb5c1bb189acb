"""ImageInWords (Garg et al. 2024) human-annotated sets, e.g. ``IIW-400/data.jsonl``: one record per line with
``image/key`` and the description under ``IIW``; IIW-400 images are DOCCI's AAR images (``images_aar/<key>.jpg``)."""
import json
from pathlib import Path
from typing import ClassVar, Literal

from .entry import Entry
from .types import RetrievalBenchmark, require_file


def load(jsonl: str, image_root: str, text_key: str = "IIW", image_suffix: str = ".jpg") -> RetrievalBenchmark:
    """Every record in file order: image ``image_root/<image/key><image_suffix>``, caption ``record[text_key]``."""
    lines = require_file(Path(jsonl), "IIW jsonl").read_text(encoding="utf-8").splitlines()
    records = [json.loads(line) for line in lines if line.strip()]
    return RetrievalBenchmark([Path(image_root, f"{r['image/key']}{image_suffix}") for r in records],
                              [[r[text_key].strip()] for r in records])


class IIWEntry(Entry):
    kind: Literal["iiw"]
    """The benchmark's adapter (fixclip/eval/benchmarks/README.md)."""
    adapter = load
    jsonl: str
    """e.g. IIW-400/data.jsonl"""
    image_root: str
    """e.g. DOCCI's images_aar/"""
    text_key: str = "IIW"
    """The record field holding the description."""
    image_suffix: str = ".jpg"
    """Appended to a record's image name to find its file."""
    path_keys: ClassVar[tuple[str, ...]] = ("jsonl", "image_root")
