"""The `caption:` params section: which MLLM, how it is served, how it is asked, and which captions are kept."""
import re
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from pipeline.params.section import Section
from pipeline.toy_prompts import PROMPTS as TOY_CAPTIONER_PROMPTS  # the prompts the default captioner learned

DEFAULT_REFUSALS = [
    r"^\s*(i'?m sorry|i am sorry|sorry,)",
    r"\bi (cannot|can't|am unable to|'m unable to) (help|describe|assist|see)",
    r"\bas an ai\b",
]


class ServerOptions(Section):
    """Flags passed to every vLLM server or in-process engine the stage starts (`None` leaves vLLM's own default)."""

    dtype: str = "auto"
    max_model_len: int = Field(512, gt=0)
    gpu_memory_utilization: float | None = Field(None, gt=0, le=1)
    tensor_parallel_size: int = Field(1, ge=1)
    limit_mm_per_prompt: dict[str, int] = {"image": 1}
    max_num_seqs: int | None = Field(16, ge=1)
    max_num_batched_tokens: int | None = Field(None, ge=1)  # tokens per engine step (prefill chunks included)
    kv_cache_memory_bytes: int | None = Field(268_435_456, gt=0)
    enforce_eager: bool = True
    # False: --no-enable-chunked-prefill. vLLM's CPU engine dies (`CPU Generator does not use offset`) when a seeded
    # request's prompt is prefilled in chunks, as long multimodal prompts are under concurrency; None: vLLM's default.
    enable_chunked_prefill: bool | None = False
    chat_template: str | None = None  # a .jinja file for a model without its own template (None: the model's)
    mm_processor_kwargs: dict = {}  # the model's HF processor settings, e.g. Qwen2-VL's {max_pixels: 200704}
    # The multimodal processor's cache of preprocessed images: 0 turns it off. Captioning sees every image once
    # (twice at most, when a rejected caption is retried with another prompt), so the cache only costs memory.
    mm_processor_cache_gb: float | None = Field(0, ge=0)
    # API server processes per server (server engine only): they share image preprocessing, which runs in the API
    # server and can bound a GPU's throughput for VLMs (vLLM docs, "Optimization and Tuning"). None: vLLM's default.
    api_server_count: int | None = Field(None, ge=1)
    # VLLM_BATCH_INVARIANT=1: results that do not depend on what else is in the batch, so reruns give the same
    # captions byte for byte; NVIDIA GPUs only in vLLM 0.32, and slower (docs/pipeline.md, "Captioning with an MLLM").
    batch_invariant: bool = False
    extra_args: list[str] = []  # any other vLLM flag; in_process takes engine flags only (no --host, --port, ...)

    @field_validator("chat_template")
    @classmethod
    def template_exists(cls, path: str | None) -> str | None:
        if path is not None and not Path(path).is_file():
            raise ValueError(f"{path!r} is not a file")
        return path


class Sampling(Section):
    """Decoding; the per-request seed is derived from `seed` and the image key."""

    temperature: float = Field(0.7, ge=0)
    top_p: float = Field(0.95, gt=0, le=1)
    max_tokens: int = Field(160, gt=0)
    seed: int = 0


class Filters(Section):
    """Which captions are rejected; every rejection is counted under its class."""

    min_words: int = Field(8, ge=0)
    max_repetition: float = Field(0.5, ge=0, le=1)
    repetition_ngram: int = Field(3, ge=1)
    keep_truncated: bool = False
    refusal_patterns: list[str] = DEFAULT_REFUSALS

    @field_validator("refusal_patterns")
    @classmethod
    def patterns_compile(cls, patterns: list[str]) -> list[str]:
        for i, pattern in enumerate(patterns):
            try:
                re.compile(pattern)
            except re.error as err:
                raise ValueError(f"refusal_patterns[{i}] {pattern!r} is not a regular expression: {err}") from err
        return patterns


# host:port, ray://host:port or [v6 address]:port
RAY_ADDRESS_FORMAT = re.compile(r"^(ray://)?(\[[0-9a-fA-F:]+\]|[^:/\s\[\]]+):\d+$")


class RayOptions(Section):
    """`distributor: ray`: `workers` Ray actors each start their own vLLM servers (num_servers of them) on their node
    and caption whole shards; a worker that dies has its shard redone by another and is replaced."""

    address: str | None = None  # None: RAY_ADDRESS if set, else a new local Ray instance
    workers: int = Field(1, ge=1)
    gpus_per_worker: int = Field(0, ge=0)  # Ray sets each worker's CUDA_VISIBLE_DEVICES; its servers split them
    startup_timeout_s: float = Field(600, gt=0)  # to wait for a worker to be placed and serving, while none is
    max_worker_failures: int = Field(3, ge=0)  # worker losses tolerated before the stage fails

    @field_validator("address")
    @classmethod
    def address_is_host_port(cls, address: str | None) -> str | None:
        if address not in (None, "auto") and not RAY_ADDRESS_FORMAT.match(address):
            raise ValueError(f"{address!r} is not host:port, ray://host:port or auto")
        return address


class CaptionParams(Section):
    """Every knob of the caption stage. Relative paths are relative to the repository root (DVC's working dir)."""

    model: str = "assets/tiny_llava/model"
    served_model_name: str = "tiny-llava"
    python: str = ".venv-vllm/bin/python"
    # in_process: vLLM's engine in worker processes of the vLLM environment, fed over a pipe without the HTTP front
    # end (about the offline engine's rate); server: OpenAI-compatible vLLM servers (started here, or `endpoints`).
    engine: Literal["in_process", "server"] = "in_process"
    num_servers: int = Field(1, ge=1)
    gpus: list[str] = []
    endpoints: list[str] = []
    host: str = "127.0.0.1"
    server: ServerOptions = ServerOptions()
    startup_timeout_s: float = Field(300, gt=0)
    endpoint_timeout_s: float = Field(30, gt=0)
    concurrency: int = Field(64, ge=1)
    request_timeout_s: float = Field(120, gt=0)
    retries: int = Field(3, ge=0)
    backoff_s: float = Field(1.0, ge=0)
    backoff_max_s: float = Field(30.0, ge=0)
    prompts: list[str] = Field(list(TOY_CAPTIONER_PROMPTS), min_length=1)
    captions_per_image: int = Field(1, ge=1)  # K captions per image, each from its own prompt
    sampling: Sampling = Sampling()
    filters: Filters = Filters()
    retry_rejected_with_other_prompt: bool = True
    image_extensions: list[str] = ["jpg", "jpeg", "png", "webp"]
    # Downscale (aspect kept, JPEG quality 95) an image whose longer side exceeds this before sending it: the model's
    # processor resizes to its native resolution anyway, and a smaller request costs less to send and decode. None:
    # send images as downloaded. In the resume fingerprint when set: the model sees other pixels.
    max_image_side: int | None = Field(None, ge=16)
    distributor: Literal["local", "ray"] = "local"  # local: servers on this machine; ray: see RayOptions
    ray: RayOptions = RayOptions()

    @field_validator("prompts")
    @classmethod
    def prompts_not_blank(cls, prompts: list[str]) -> list[str]:
        for i, prompt in enumerate(prompts):
            if not prompt.strip():
                raise ValueError(f"prompts[{i}] is empty")
        return prompts

    @field_validator("endpoints")
    @classmethod
    def endpoints_are_urls(cls, endpoints: list[str]) -> list[str]:
        for i, url in enumerate(endpoints):
            if not re.match(r"^https?://[^/\s]+", url):
                raise ValueError(f"endpoints[{i}] {url!r} is not an http(s) base URL such as http://host:8000")
        return [url.rstrip("/") for url in endpoints]

    @model_validator(mode="after")
    def enough_prompts(self) -> "CaptionParams":
        if self.captions_per_image > len(self.prompts):
            raise ValueError(
                f"captions_per_image: {self.captions_per_image} captions per image need as many distinct prompts, "
                f"but prompts lists {len(self.prompts)}"
            )
        return self

    @model_validator(mode="after")
    def gpus_match_servers(self) -> "CaptionParams":
        needed = self.num_servers * self.server.tensor_parallel_size
        if self.gpus and len(self.gpus) != needed:
            raise ValueError(
                f"gpus: {len(self.gpus)} listed, but num_servers ({self.num_servers}) x "
                f"server.tensor_parallel_size ({self.server.tensor_parallel_size}) = {needed}"
            )
        return self

    @model_validator(mode="after")
    def ray_places_the_servers(self) -> "CaptionParams":
        if self.distributor != "ray":
            return self
        if self.endpoints:
            raise ValueError("endpoints: distributor ray starts the servers on its workers; endpoints need "
                             "distributor: local")
        if self.gpus:
            raise ValueError("gpus: with distributor ray, Ray gives each worker its GPUs: set ray.gpus_per_worker")
        needed = self.num_servers * self.server.tensor_parallel_size
        if self.ray.gpus_per_worker not in (0, needed):
            raise ValueError(
                f"ray.gpus_per_worker: {self.ray.gpus_per_worker}, but each worker's num_servers "
                f"({self.num_servers}) x server.tensor_parallel_size ({self.server.tensor_parallel_size}) = {needed}"
            )
        return self

    @model_validator(mode="after")
    def engines_of_endpoints(self) -> "CaptionParams":
        if self.engine == "in_process" and self.endpoints:
            raise ValueError("engine: in_process starts its own engines; running servers in endpoints need "
                             "engine: server")
        if self.engine == "in_process" and self.server.api_server_count is not None:
            raise ValueError("server.api_server_count: API servers exist with engine: server only")
        return self

    def content_fingerprint(self) -> dict:
        """The params that change caption text; operational knobs (fleet size, timeouts) are left out."""
        return self.model_dump(include={
            "model", "served_model_name", "prompts", "captions_per_image", "sampling", "filters",
            "retry_rejected_with_other_prompt", "image_extensions",
        }) | {"server": self.server.model_dump(include={"dtype", "max_model_len"}) | self._request_shaping()} | (
            {"max_image_side": self.max_image_side} if self.max_image_side else {})

    def _request_shaping(self) -> dict:
        """The server options that change how a request is rendered, when set (so an unset one keeps the stamp)."""
        shaping = {}
        if self.server.chat_template:
            shaping["chat_template"] = Path(self.server.chat_template).read_text()
        if self.server.mm_processor_kwargs:
            shaping["mm_processor_kwargs"] = self.server.mm_processor_kwargs
        return shaping

