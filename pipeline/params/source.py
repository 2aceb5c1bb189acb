"""The `source:` section: where the image URLs come from (the toy world, or a user's URL list)."""
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from pipeline.params.section import Section


class ToyWorldParams(Section):
    """Synthetic scenes of coloured shapes on a grid (see pipeline/toyworld/scenes.py)."""

    seed: int = 0
    num_images: int = Field(3000, ge=1)
    image_size: int = Field(64, ge=16)
    grid: int = Field(3, ge=2, le=6)
    min_objects: int = Field(3, ge=1)
    max_objects: int = Field(6, ge=1)
    textures: bool = True

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
    format: Literal["auto", "csv", "tsv", "parquet", "jsonl"] = "auto"
    url_col: str = "url"
    caption_col: str | None = "caption"
    keep_cols: list[str] = []
    max_samples: int | None = Field(None, ge=1)
    seed: int = 0


class SourceParams(Section):
    kind: Literal["toyworld", "url_list"] = "toyworld"
    toyworld: ToyWorldParams = ToyWorldParams()
    url_list: UrlListParams = UrlListParams()

    @model_validator(mode="after")
    def _url_list_exists(self):
        if self.kind == "url_list" and not Path(self.url_list.path).is_file():
            raise ValueError(f"url_list.path: file not found: {self.url_list.path!r}")
        return self
