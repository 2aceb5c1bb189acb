"""ShareGPT4V-1k / -10k: the first 1,000 / 10,000 SAM images of ShareGPT4V's
``share-captioner_coco_lcs_sam_1246k_1107.json`` (the Long-CLIP / LoTLIP protocol), image paths relative to the
data root (``sam/images/sa_<n>.jpg``)."""
import json
from pathlib import Path
from typing import ClassVar, Literal

from .entry import Entry
from .types import RetrievalBenchmark, require_file

SUBSET_SIZES = {"first_1k": 1000, "first_10k": 10000}


def _caption(entry: dict) -> str:
    """The first answer of the conversation: the ShareCaptioner description."""
    return next(turn["value"] for turn in entry["conversations"] if turn["from"] == "gpt").strip()


def load(json_path: str, image_root: str, subset: str = "first_1k") -> RetrievalBenchmark:
    """The first ``subset`` entries whose image lies under ``sam/``, in file order; one caption per image."""
    entries = json.loads(require_file(Path(json_path), "ShareGPT4V json").read_text(encoding="utf-8"))
    size = SUBSET_SIZES[subset]
    chosen = [e for e in entries if e["image"].startswith("sam/")][:size]
    if len(chosen) < size:
        raise ValueError(f"{json_path}: only {len(chosen)} SAM entries, {subset} needs {size}")
    return RetrievalBenchmark([Path(image_root, e["image"]) for e in chosen], [[_caption(e)] for e in chosen])


class ShareGPT4VEntry(Entry):
    kind: Literal["sharegpt4v"]
    """The benchmark's adapter (fixclip/eval/benchmarks/README.md)."""
    adapter = load
    json_path: str
    """share-captioner_coco_lcs_sam_1246k_1107.json"""
    image_root: str
    """ShareGPT4V data root: image paths in the json (sam/images/...) are relative to it"""
    subset: Literal["first_1k", "first_10k"] = "first_1k"
    """The first 1k or 10k records of the json, the published test splits."""
    path_keys: ClassVar[tuple[str, ...]] = ("json_path", "image_root")
