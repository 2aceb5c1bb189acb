"""What an adapter returns: image paths with captions (retrieval) or with class labels (zero-shot)."""
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class RetrievalBenchmark:
    """Images and the captions of each image (one or several per image). With ``max_text_tokens`` every model
    reads only the first that many tokens of each caption (start and end tokens included)."""

    images: list[Path]
    captions: list[list[str]]
    max_text_tokens: int | None = None

    def __post_init__(self):
        if len(self.images) != len(self.captions):
            raise ValueError(f"{len(self.images)} images but {len(self.captions)} caption lists")
        empty = [str(p) for p, c in zip(self.images, self.captions) if not c]
        if empty:
            raise ValueError(f"{len(empty)} images without a caption, e.g. {empty[0]}")
        check_images(self.images)

    def texts_and_pairs(self) -> tuple[list[str], "torch.Tensor", "torch.Tensor"]:
        """Distinct captions (first-seen order) and the (text, image) positive pairs.

        A caption shared by several images becomes one text positive for each of them, so equal texts never tie
        against each other; a caption repeated for the same image counts once."""
        index: dict[str, int] = {}
        pairs: set[tuple[int, int]] = set()
        for image, captions in enumerate(self.captions):
            for caption in captions:
                pairs.add((index.setdefault(caption, len(index)), image))
        ordered = sorted(pairs)
        import torch  # here: params validation imports this module (its entries) and must not import torch
        return list(index), torch.tensor([t for t, _ in ordered]), torch.tensor([i for _, i in ordered])

    @property
    def num_captions(self) -> int:
        return sum(len(c) for c in self.captions)


@dataclass(frozen=True)
class ClassificationBenchmark:
    """Images with class indices; prompts are ``template.format(c=classname)`` for every template."""

    images: list[Path]
    labels: list[int]
    classnames: list[str]
    templates: list[str]

    def __post_init__(self):
        if len(self.images) != len(self.labels):
            raise ValueError(f"{len(self.images)} images but {len(self.labels)} labels")
        if not self.templates or any("{c}" not in t for t in self.templates):
            raise ValueError("templates must be non-empty and each contain '{c}'")
        if self.labels and not 0 <= min(self.labels) <= max(self.labels) < len(self.classnames):
            raise ValueError("labels must index classnames")
        check_images(self.images)

    def prompts(self) -> list[list[str]]:
        return [[t.format(c=name) for t in self.templates] for name in self.classnames]


Benchmark = RetrievalBenchmark | ClassificationBenchmark


def require_file(path: Path, what: str) -> Path:
    """``path`` if it is a file, else FileNotFoundError naming what was expected there."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    return Path(path)


def check_images(paths: list[Path]) -> None:
    """FileNotFoundError counting the missing image files and naming the first."""
    missing = [str(p) for p in paths if not Path(p).is_file()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} of {len(paths)} image files missing, e.g. {missing[0]}")
