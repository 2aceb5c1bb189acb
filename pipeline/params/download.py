"""The `download:` section: img2dataset's options, passed through by name."""
import ipaddress
from typing import Literal

from pydantic import Field, field_validator

from pipeline.params.section import Section


class DownloadParams(Section):
    """img2dataset options, passed through by name (https://github.com/rom1504/img2dataset#api)."""

    image_size: int = Field(64, ge=8)
    """Side of the saved images in pixels (img2dataset resizes to it with resize_mode)."""
    resize_mode: Literal["no", "border", "keep_ratio", "keep_ratio_largest", "center_crop"] = "border"
    """no | border | keep_ratio | keep_ratio_largest | center_crop: how an image is brought to image_size
    (img2dataset's modes)."""
    resize_only_if_bigger: bool = False
    """Leave images smaller than image_size at their size."""
    encode_format: Literal["jpg", "png", "webp"] = "jpg"
    """Format the images are saved in."""
    encode_quality: int = Field(95, ge=1, le=100)
    """JPEG/WebP quality of the saved images."""
    processes_count: int = Field(2, ge=1)
    """Download processes (multiprocessing: on this machine)."""
    thread_count: int = Field(16, ge=1)
    """Download threads per process."""
    timeout: int = Field(10, ge=1)
    """seconds per URL"""
    retries: int = Field(0, ge=0)
    """Retries of a failed URL."""
    number_sample_per_shard: int = Field(500, ge=1)
    """Samples per raw tar written."""
    distributor: Literal["multiprocessing", "pyspark", "ray"] = "multiprocessing"
    """multiprocessing | pyspark (Spark local or a cluster) | ray (RAY_ADDRESS or local). multiprocessing and ray
    download each shard as a job of the stage's job runner (a dead local worker stops the stage, Ray reruns a task
    whose worker died); pyspark is img2dataset's own, on the active SparkSession or a local one."""
    min_image_size: int = Field(0, ge=0)
    """Images whose smaller side is below this many pixels are dropped (counted)."""
    max_image_area: int = Field(89_478_485, ge=1)
    """Decompression-bomb guard on the original (pixels): Pillow's own default limit."""
    extra: dict = {}
    """any other img2dataset.download option, e.g. {compute_hash: md5}"""
    allow_networks: list[str] = []
    """The guard refuses non-public addresses (docs/pipeline.md, "Security"); opens e.g. [10.0.0.0/8]: networks
    opened on purpose."""
    allow_file_roots: list[str] = []
    """file: URLs are refused outside data/toyworld; more roots, e.g. [/data/images]"""

    @field_validator("allow_networks")
    @classmethod
    def _networks(cls, networks: list[str]) -> list[str]:
        for net in networks:
            try:
                ipaddress.ip_network(net)
            except ValueError:
                raise ValueError(f"not a network (CIDR, host bits zero): {net!r}") from None
        return networks
