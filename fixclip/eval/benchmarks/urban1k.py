"""Urban1k (Long-CLIP, Zhang et al. 2024): ``root/image/<n>.jpg`` with ``root/caption/<n>.txt``, 1000 pairs."""
from pathlib import Path
from typing import ClassVar, Literal

from .entry import Entry
from .types import RetrievalBenchmark, require_file


def _order(path: Path):
    return (0, int(path.stem), "") if path.stem.isdigit() else (1, 0, path.stem)


def load(root: str) -> RetrievalBenchmark:
    """Every caption file with its same-named image; one long caption per image."""
    captions = sorted(Path(root, "caption").glob("*.txt"), key=_order)
    if not captions:
        raise FileNotFoundError(f"no caption/*.txt under {root}")
    images = [require_file(Path(root, "image", f"{c.stem}.jpg"), "Urban1k image") for c in captions]
    return RetrievalBenchmark(images, [[c.read_text(encoding="utf-8").strip()] for c in captions])


class Urban1kEntry(Entry):
    kind: Literal["urban1k"]
    """The benchmark's adapter (fixclip/eval/benchmarks/README.md)."""
    adapter = load
    root: str
    """folder holding image/ and caption/"""
    path_keys: ClassVar[tuple[str, ...]] = ("root",)
