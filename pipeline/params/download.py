"""The `download:` section: img2dataset's options, passed through by name."""
import ipaddress
from typing import Literal

from pydantic import Field, field_validator

from pipeline.params.section import Section


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
    # pyspark: the active SparkSession or a local one; ray: the cluster at RAY_ADDRESS or a local instance.
    distributor: Literal["multiprocessing", "pyspark", "ray"] = "multiprocessing"
    min_image_size: int = Field(0, ge=0)
    # Decompression-bomb guard on the original image (Pillow's own default limit, in pixels).
    max_image_area: int = Field(89_478_485, ge=1)
    extra: dict = {}
    # The download guard (docs/pipeline.md, "Security"): networks and file roots opened on purpose.
    allow_networks: list[str] = []
    allow_file_roots: list[str] = []

    @field_validator("allow_networks")
    @classmethod
    def _networks(cls, networks: list[str]) -> list[str]:
        for net in networks:
            try:
                ipaddress.ip_network(net)
            except ValueError:
                raise ValueError(f"not a network (CIDR, host bits zero): {net!r}") from None
        return networks
