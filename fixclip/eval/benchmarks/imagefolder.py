"""ImageNet-style classification folders: ``root/<class folder>/<image>``, class folders sorted by name (as
torchvision's ImageFolder), with readable class names from an optional file."""
import json
from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field

from .entry import Entry
from .types import ClassificationBenchmark

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}


def _classnames(folders: list[str], classnames: str | None) -> list[str]:
    """Names from a JSON object (folder -> name), a text file (one name per line, in sorted-folder order), or the
    folder names themselves."""
    if classnames is None:
        return folders
    path = Path(classnames)
    if path.suffix == ".json":
        mapping = json.loads(path.read_text(encoding="utf-8"))
        return [mapping[folder] for folder in folders]
    names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if len(names) != len(folders):
        raise ValueError(f"{classnames}: {len(names)} names for {len(folders)} class folders")
    return names


def load(root: str, templates: list[str], classnames: str | None = None) -> ClassificationBenchmark:
    folders = sorted(p.name for p in Path(root).iterdir() if p.is_dir())
    if not folders:
        raise FileNotFoundError(f"no class folders under {root}")
    images, labels = [], []
    for label, folder in enumerate(folders):
        for path in sorted(Path(root, folder).iterdir()):
            if path.suffix.lower() in IMAGE_SUFFIXES:
                images.append(path)
                labels.append(label)
    return ClassificationBenchmark(images, labels, _classnames(folders, classnames), list(templates))


class ImageFolderEntry(Entry):
    kind: Literal["imagefolder"]
    """The benchmark's adapter (fixclip/eval/benchmarks/README.md)."""
    adapter = load
    root: str
    """root/<class folder>/<image>"""
    templates: list[str] = Field(["a photo of a {c}."], min_length=1)
    """Zero-shot prompts, each with {c} (the class name); their embeddings are averaged."""
    classnames: str | None = None
    """.json {folder: name} or .txt (one name per line, sorted-folder order)"""
    path_keys: ClassVar[tuple[str, ...]] = ("root",)

    @property
    def is_retrieval(self) -> bool:
        return False
