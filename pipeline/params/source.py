"""The `source:` section: where the image URLs come from (the toy world, or a user's URL list)."""
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from pipeline.params.section import Section


class ToyWorldParams(Section):
    """Synthetic scenes of coloured shapes on a grid (see pipeline/toyworld/scenes.py)."""

    seed: int = 0
    """Seed of the rendered scenes."""
    num_images: int = Field(3000, ge=1)
    """Scenes rendered (one image and its URL each)."""
    image_size: int = Field(64, ge=16)
    """rendered size; = download.image_size, so img2dataset only re-encodes"""
    grid: int = Field(3, ge=2, le=6)
    """grid x grid cells, at most one object per cell"""
    min_objects: int = Field(3, ge=1)
    """3+ objects make the long description exceed CLIP's 77 tokens"""
    max_objects: int = Field(6, ge=1)
    """At most this many objects per scene (at most grid x grid)."""
    textures: bool = True
    """solid / striped / outlined fills"""

    @model_validator(mode="after")
    def _objects_fit(self):
        if self.min_objects > self.max_objects:
            raise ValueError(f"min_objects ({self.min_objects}) > max_objects ({self.max_objects})")
        if self.max_objects > self.grid**2:
            raise ValueError(f"max_objects ({self.max_objects}) exceeds the {self.grid}x{self.grid} grid's cells")
        return self


class UrlListParams(Section):
    """A user's list of image URLs (csv, tsv, parquet or jsonl) normalised into data/urls.parquet."""

    path: str = "assets/example_urls.csv"
    """csv, tsv, parquet or jsonl"""
    format: Literal["auto", "csv", "tsv", "parquet", "jsonl"] = "auto"
    """auto (from the suffix) | csv | tsv | parquet | jsonl"""
    url_col: str = "url"
    """Column holding the image URLs."""
    caption_col: str | None = "caption"
    """becomes alt_text; null if the list has none"""
    keep_cols: list[str] = []
    """extra columns carried through to the downloaded samples' json"""
    max_samples: int | None = Field(None, ge=1)
    """seeded subsample of the cleaned list"""
    seed: int = 0
    """Seed of the max_samples subsample."""


class SourceParams(Section):
    kind: Literal["toyworld", "url_list"] = "toyworld"
    """toyworld | url_list: where the image URLs come from."""
    toyworld: ToyWorldParams = ToyWorldParams()
    """Synthetic scenes, used when kind: toyworld."""
    url_list: UrlListParams = UrlListParams()
    """used when kind: url_list"""

    @model_validator(mode="after")
    def _url_list_exists(self):
        if self.kind == "url_list" and not Path(self.url_list.path).is_file():
            raise ValueError(f"url_list.path: file not found: {self.url_list.path!r}")
        return self
