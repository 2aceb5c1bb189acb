"""The typed schema of params.yaml: one section per stage, validated in full before any stage does work.

Every stage calls `load_params()` first, so a typo anywhere in params.yaml fails fast with the key path,
e.g. `download.thread_count: expected int, got 'many'`.
"""
import re
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

import yaml
from pydantic import Field, ValidationError, model_validator

from pipeline.caption_params import CaptionParams
from pipeline.evaluate_params import EvaluateParams
from pipeline.schema import Section
from pipeline.train_params import TrainParams

PARAMS_FILE = "params.yaml"


class ToyWorldParams(Section):
    """Synthetic scenes of coloured shapes on a grid (see pipeline/toyworld.py)."""

    seed: int = 0
    num_images: int = Field(3000, ge=1)
    image_size: int = Field(96, ge=16)
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
    caption_col: str | None = None
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


class DownloadParams(Section):
    """img2dataset options, passed through by name (https://github.com/rom1504/img2dataset#api)."""

    image_size: int = Field(64, ge=8)
    resize_mode: Literal["no", "border", "keep_ratio", "keep_ratio_largest", "center_crop"] = "border"
    resize_only_if_bigger: bool = False
    encode_format: Literal["jpg", "png", "webp"] = "jpg"
    encode_quality: int = Field(95, ge=1, le=100)
    processes_count: int = Field(2, ge=1)
    thread_count: int = Field(16, ge=1)
    timeout: int = Field(10, ge=1)
    retries: int = Field(0, ge=0)
    number_sample_per_shard: int = Field(500, ge=1)
    distributor: Literal["multiprocessing", "pyspark", "ray"] = "multiprocessing"
    min_image_size: int = Field(0, ge=0)
    # Decompression-bomb guard on the original image (Pillow's own default limit, in pixels).
    max_image_area: int = Field(89_478_485, ge=1)
    extra: dict = {}


class ShardParams(Section):
    """Deterministic webdataset shards for training (see pipeline/shards.py)."""

    seed: int = 0
    samples_per_shard: int = Field(1000, ge=1)
    val_fraction: float = Field(0.05, ge=0.0, lt=1.0)
    # Short text of the short branch: the long caption's first sentence (Long-CLIP's convention), the source's alt
    # text, or both (alt text for a seeded `alt_text_rate` of samples).
    short_text: Literal["first_sentence", "alt_text", "both"] = "first_sentence"
    alt_text_rate: float = Field(0.5, ge=0.0, le=1.0)


class Params(Section):
    source: SourceParams = SourceParams()
    download: DownloadParams = DownloadParams()
    caption: CaptionParams = CaptionParams()
    shard: ShardParams = ShardParams()
    train: TrainParams = TrainParams()
    evaluate: EvaluateParams = EvaluateParams()


class ParamsError(ValueError):
    """params.yaml is unreadable or invalid; the message names every bad key."""


_EXPECTED = {
    "int_type": "expected int",
    "int_parsing": "expected int",
    "int_from_float": "expected int",
    "float_type": "expected float",
    "float_parsing": "expected float",
    "bool_type": "expected bool",
    "bool_parsing": "expected bool",
    "string_type": "expected str",
    "list_type": "expected list",
    "dict_type": "expected mapping",
    "model_type": "expected mapping",
}


def _describe(error: dict) -> str:
    key = ".".join(str(part) for part in error["loc"])
    kind = error["type"]
    if kind == "extra_forbidden":
        return f"{key}: unknown key"
    if kind == "missing":
        return f"{key}: missing key"
    if kind == "value_error":
        # Section validators phrase their errors as "<sub.key>: what is wrong" or as plain text.
        message = error["msg"].removeprefix("Value error, ")
        return f"{key}.{message}" if re.match(r"^[\w.]+: ", message) else f"{key}: {message}"
    what = _EXPECTED.get(kind, error["msg"].lower())
    return f"{key}: {what}, got {error['input']!r}"


def parse_params(raw: object, origin: str = PARAMS_FILE) -> Params:
    """Validate an already-loaded mapping; raises ParamsError naming each bad key."""
    try:
        return Params.model_validate(raw if raw is not None else {})
    except ValidationError as exc:
        lines = "\n".join(f"  {_describe(e)}" for e in exc.errors())
        raise ParamsError(f"{origin}: invalid params\n{lines}") from None


def load_params(path: str | Path = PARAMS_FILE) -> Params:
    """Read and validate params.yaml (the whole file: every stage checks every section before any work)."""
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise ParamsError(f"{path}: file not found") from None
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path}: not valid YAML: {exc}") from None
    return parse_params(raw, str(path))



@contextmanager
def exit_on_params_error():
    """For stage entry points: a ParamsError prints the named bad keys and exits 2, without a traceback."""
    try:
        yield
    except ParamsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
