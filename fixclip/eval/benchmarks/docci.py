"""DOCCI (Onoe et al. 2024): ``docci_descriptions.jsonlines`` (example_id, split, image_file, description) next to
the extracted ``images/`` folder; the test split has 5,000 images."""
import json
from pathlib import Path
from typing import ClassVar, Literal

from .entry import Entry
from .types import RetrievalBenchmark, require_file


def load(root: str, split: str = "test") -> RetrievalBenchmark:
    """Records of ``split`` in file order; one description per image."""
    lines = require_file(Path(root, "docci_descriptions.jsonlines"), "DOCCI descriptions").read_text(
        encoding="utf-8").splitlines()
    records = [r for r in (json.loads(line) for line in lines if line.strip()) if r["split"] == split]
    if not records:
        raise ValueError(f"{root}: no DOCCI records in split {split!r}")
    return RetrievalBenchmark([Path(root, "images", r["image_file"]) for r in records],
                              [[r["description"].strip()] for r in records])


class DOCCIEntry(Entry):
    kind: Literal["docci"]
    """The benchmark's adapter (fixclip/eval/benchmarks/README.md)."""
    adapter = load
    root: str
    """docci_descriptions.jsonlines + images/"""
    split: str = "test"
    """The DOCCI split scored."""
    path_keys: ClassVar[tuple[str, ...]] = ("root",)
