"""Check downloaded images (img2dataset's output) against the benchmark fingerprints: the shard workers' step and
the checker's."""
from dataclasses import dataclass
from pathlib import Path

from pipeline.decontaminate import fingerprint
from pipeline.decontaminate.index import Match, loaded

Data = bytes | memoryview


@dataclass(frozen=True)
class Decontamination:
    """What a shard worker needs to check its images (picklable: it travels to local processes and Ray tasks)."""

    fingerprints: Path  # the benchmarks stage's folder
    threshold: float  # fingerprint.aligned_distance at or below which an image is a copy
    resize_mode: str  # download.resize_mode: where img2dataset padded the image (border)

    def check(self, images: list[Data], originals: list[tuple[int, int] | None]) -> list[Match | None | str]:
        """Per image: its benchmark match, None, or "undecodable" for bytes that do not decode."""
        pictures, positions, result = [], [], []
        for data, original in zip(images, originals):
            try:
                image = fingerprint.decode(data)
            except fingerprint.UnreadableImage:
                result.append("undecodable")
                continue
            box = fingerprint.content_box(image.size, original, self.resize_mode)
            positions.append(len(result))
            result.append(None)
            pictures.append(fingerprint.canonical(image, box))
        for position, match in zip(positions, loaded(self.fingerprints).match(pictures, self.threshold)):
            result[position] = match
        return result
