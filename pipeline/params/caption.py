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
    """Flags of every started server (null: vLLM's own default): every vLLM server or in-process engine the stage
    starts."""

    dtype: str = "auto"
    """Weights' and activations' dtype (vLLM's --dtype)."""
    max_model_len: int = Field(512, gt=0)
    """Image tokens + prompt + max_tokens must fit (checked before any work); LLaVA-NeXT: 4096. vLLM's context
    length."""
    gpu_memory_utilization: float | None = Field(None, gt=0, le=1)
    """On GPU e.g. 0.9 (and kv_cache_memory_bytes: null): the share of GPU memory vLLM may use."""
    tensor_parallel_size: int = Field(1, ge=1)
    """GPUs each server's model is split over."""
    limit_mm_per_prompt: dict[str, int] = {"image": 1}
    """Most images per prompt, by modality."""
    max_num_seqs: int | None = Field(16, ge=1)
    """Most requests an engine step batches."""
    max_num_batched_tokens: int | None = Field(None, ge=1)
    """Tokens per engine step, prefill chunks included (null: vLLM's default); tune with bench/caption.py --sweep."""
    kv_cache_memory_bytes: int | None = Field(268_435_456, gt=0)
    """CPU: a fixed KV cache of 256 MiB. The KV cache's size in bytes (null: from gpu_memory_utilization)."""
    enforce_eager: bool = True
    """CPU; on GPU false enables CUDA graphs. True runs the model eagerly."""
    enable_chunked_prefill: bool | None = False
    """CPU: false (seeded requests prefilled in chunks crash vLLM's CPU engine); GPU: null. False passes
    --no-enable-chunked-prefill: vLLM's CPU engine dies (`CPU Generator does not use offset`) when a seeded request's
    prompt is prefilled in chunks, as long multimodal prompts are under concurrency; null: vLLM's default."""
    chat_template: str | None = None
    """A .jinja file for a model without its own chat template (null: the model's)."""
    mm_processor_kwargs: dict = {}
    """The model's processor settings, e.g. Qwen2-VL {max_pixels: 200704} (its Hugging Face processor's)."""
    mm_processor_cache_gb: float | None = Field(0, ge=0)
    """Preprocessed-image cache; 0: off (captioning sees each image once). Twice at most, when a rejected caption is
    retried with another prompt, so the cache only costs memory."""
    api_server_count: int | None = Field(None, ge=1)
    """Engine server only: API server processes sharing image preprocessing (GPU: try 2-4). Preprocessing runs in the
    API server and can bound a GPU's throughput for VLMs (vLLM docs, "Optimization and Tuning"); null: vLLM's
    default."""
    batch_invariant: bool = False
    """VLLM_BATCH_INVARIANT=1: byte-identical captions across runs; NVIDIA GPUs only, slower. Results then do not
    depend on what else is in the batch; NVIDIA GPUs only in vLLM 0.32 (docs/pipeline.md, "Captioning with an MLLM")."""
    extra_args: list[str] = []
    """Any other server flag, e.g. ["--max-num-batched-tokens", "8192"]; in_process takes engine flags only (no
    --host, --port, ...)."""

    @field_validator("chat_template")
    @classmethod
    def template_exists(cls, path: str | None) -> str | None:
        if path is not None and not Path(path).is_file():
            raise ValueError(f"{path!r} is not a file")
        return path


class Sampling(Section):
    """Decoding; the per-request seed is derived from `seed` and the image key."""

    temperature: float = Field(0.7, ge=0)
    """Sampling temperature."""
    top_p: float = Field(0.95, gt=0, le=1)
    """Nucleus sampling: the smallest set of tokens whose probability reaches top_p."""
    max_tokens: int = Field(160, gt=0)
    """The toy captioner's longest answers run ~120 tokens. Most tokens per caption; a caption cut there is
    "truncated"."""
    seed: int = 0
    """Each request's seed derives from this, the image key and the prompt."""


class Filters(Section):
    """Each rejected caption is counted under its class in metrics/caption.json."""

    min_words: int = Field(8, ge=0)
    """Captions with fewer words are rejected as too short."""
    max_repetition: float = Field(0.5, ge=0, le=1)
    """Share of repeated word n-grams above which a caption is repetitive."""
    repetition_ngram: int = Field(3, ge=1)
    """n of those n-grams."""
    keep_truncated: bool = False
    """A caption cut at max_tokens misses objects: drop it (counted as truncated)."""
    refusal_patterns: list[str] = DEFAULT_REFUSALS
    """Regular expressions (case-insensitive) that mark a caption as a refusal."""

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
    """Distributor ray only (docs/pipeline.md, "Captioning with an MLLM"): `workers` Ray actors each start their own vLLM servers (num_servers of them) on their node
    and caption whole shards; a worker that dies has its shard redone by another and is replaced."""

    address: str | None = None
    """Host:port | ray://host:port | auto; null: RAY_ADDRESS if set, else a new local instance."""
    workers: int = Field(1, ge=1)
    """Ray actors; each starts num_servers vLLM servers on its node and captions whole shards."""
    gpus_per_worker: int = Field(0, ge=0)
    """On GPU nodes num_servers x tensor_parallel_size; Ray sets CUDA_VISIBLE_DEVICES, which the worker's servers
    split."""
    startup_timeout_s: float = Field(600, gt=0)
    """While no worker is serving: fail if none is placed and healthy by then."""
    max_worker_failures: int = Field(3, ge=0)
    """Lost workers tolerated (their shards are redone by others) before the stage fails."""

    @field_validator("address")
    @classmethod
    def address_is_host_port(cls, address: str | None) -> str | None:
        if address not in (None, "auto") and not RAY_ADDRESS_FORMAT.match(address):
            raise ValueError(f"{address!r} is not host:port, ray://host:port or auto")
        return address


class CaptionParams(Section):
    """Every knob of the caption stage. Relative paths are relative to the repository root (DVC's working dir)."""

    model: str = "assets/tiny_llava/model"
    """Local model dir (or an HF id where a hub is reachable: unset HF_HUB_OFFLINE)."""
    served_model_name: str = "tiny-llava"
    """The name requests address the model by."""
    python: str = ".venv-vllm/bin/python"
    """Interpreter of the vLLM environment (docs/development.md, "Environments")."""
    engine: Literal["in_process", "server"] = "in_process"
    """In_process: vLLM's engine in worker processes, no HTTP | server: vLLM OpenAI servers (or endpoints).
    in_process feeds the engines over a pipe (about the offline engine's rate); server starts OpenAI-compatible vLLM
    servers here, or uses `endpoints`."""
    num_servers: int = Field(1, ge=1)
    """servers (or in_process engines) this stage starts; on a GPU box one per GPU (see gpus)"""
    gpus: list[str] = []
    """e.g. ["0","1","2","3"]: num_servers x tensor_parallel_size ids, CUDA_VISIBLE_DEVICES per server"""
    endpoints: list[str] = []
    """e.g. [http://host1:8000] with engine: server: use these running servers and start none"""
    host: str = "127.0.0.1"
    """where started servers bind"""
    server: ServerOptions = ServerOptions()
    startup_timeout_s: float = Field(300, gt=0)
    """a server not healthy by then fails the stage with its log tail"""
    endpoint_timeout_s: float = Field(30, gt=0)
    """Seconds to wait for a listed endpoint to answer its health check."""
    concurrency: int = Field(64, ge=1)
    """requests in flight per server"""
    request_timeout_s: float = Field(120, gt=0)
    """Seconds per caption request."""
    retries: int = Field(3, ge=0)
    """Per request, on connection errors, timeouts, 408/429/5xx; exponential backoff."""
    backoff_s: float = Field(1.0, ge=0)
    """First wait before a retry, in seconds (doubled each retry)."""
    backoff_max_s: float = Field(30.0, ge=0)
    """Longest wait before a retry, in seconds."""
    prompts: list[str] = Field(list(TOY_CAPTIONER_PROMPTS), min_length=1)
    """One is drawn per image, deterministically from its key; the toy captioner was trained to answer each in its
    own style (pipeline/toyworld/captions.py)."""
    captions_per_image: int = Field(1, ge=1)
    """K captions per image from K different prompts (Holistic CLIP: K >= train.holistic's)."""
    sampling: Sampling = Sampling()
    filters: Filters = Filters()
    retry_rejected_with_other_prompt: bool = True
    """A rejected caption is asked for once more with another prompt."""
    image_extensions: list[str] = ["jpg", "jpeg", "png", "webp"]
    """Image members of a downloaded tar that are captioned."""
    max_image_side: int | None = Field(None, ge=16)
    """E.g. 448: downscale larger images before sending (the model resizes them anyway); in the resume fingerprint.
    The image is downscaled, aspect kept, to JPEG quality 95: a smaller request costs less to send and decode; null:
    send images as downloaded."""
    distributor: Literal["local", "ray"] = "local"
    """local: servers on this machine | ray: workers on a Ray cluster, each with its own servers (`ray`)."""
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

