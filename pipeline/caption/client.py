"""Async OpenAI-chat client that captions images on a set of vLLM servers or in-process engine workers.

`concurrency` workers per server (or engine) pull from one queue, so faster servers take more work. Each of the
`captions_per_image` captions of an image is its own request in that queue. The prompt and the sampling seed of a
caption are functions of the image key and the caption's index, so a rerun asks exactly the same question.
Transient errors (connection, timeout, 429, 5xx, an engine worker gone) are retried with exponential backoff; when
retries run out the whole run stops with `CaptionServiceError` (finished shards are kept, a rerun resumes). A
request refused as longer than the server's context stops the run too (`ContextLengthError`, naming
`caption.server.max_model_len`): every image would fail alike. Other HTTP errors (an engine's refusals alike) fail
that caption only.
"""
import asyncio
import base64
import hashlib
import io
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import aiohttp
from PIL import Image
from tqdm import tqdm

from pipeline.caption.context import MAX_MODEL_LEN_KEY, ContextLengthError, is_context_error
from pipeline.caption.filters import CaptionFilter
from pipeline.caption.fleet import EngineGone, EngineProcess
from pipeline.params.caption import CaptionParams

MIME_TYPES = {"jpg": "image/jpeg", "jpeg": "image/jpeg", "png": "image/png", "webp": "image/webp"}
TRANSIENT_STATUS = {408, 429, 500, 502, 503, 504}


class CaptionServiceError(RuntimeError):
    """The servers stayed unreachable or failing after all retries."""


class PermanentRequestError(RuntimeError):
    """The server rejected this request (e.g. an image it cannot decode); retrying will not help."""


@dataclass(frozen=True)
class ImageItem:
    shard: str
    key: str
    data: bytes
    extension: str


@dataclass(frozen=True)
class Completion:
    text: str
    finish_reason: str | None
    tokens: int


@dataclass(frozen=True)
class CaptionResult:
    shard: str
    key: str
    caption_index: int
    caption: str
    prompt_id: int
    finish_reason: str | None
    tokens: int
    status: str


def stable_int(*parts: object) -> int:
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "big")


def prompt_id_for(key: str, n_prompts: int) -> int:
    return stable_int("prompt", key) % n_prompts


def caption_prompt_id(key: str, caption_index: int, n_prompts: int) -> int:
    """Caption j of an image asks the j-th prompt after the image's own: the K prompts of an image are distinct."""
    return (prompt_id_for(key, n_prompts) + caption_index) % n_prompts


def retry_prompt_id(prompt_id: int, captions_per_image: int, n_prompts: int) -> int | None:
    """The prompt a rejected caption is retried with: K prompts on, so past the image's own K prompts when there are
    at least 2K; None when every prompt is already asked by a caption of the image (n_prompts <= K)."""
    if n_prompts <= captions_per_image:
        return None
    return (prompt_id + captions_per_image) % n_prompts


def caption_prompt_ids(params: CaptionParams, key: str, caption_index: int) -> list[int]:
    """The prompts caption `caption_index` of image `key` asks, in order: its own, then the retry's if rejected."""
    n_prompts = len(params.prompts)
    first = caption_prompt_id(key, caption_index, n_prompts)
    retry = retry_prompt_id(first, params.captions_per_image, n_prompts)
    return [first] if retry is None or not params.retry_rejected_with_other_prompt else [first, retry]


def request_seed(seed: int, key: str, prompt_id: int) -> int:
    return stable_int("seed", seed, key, prompt_id) % (2**31 - 1)


def shrunk(data: bytes, extension: str, max_side: int | None) -> tuple[bytes, str]:
    """(data, extension) of the image to send: re-encoded as JPEG at most max_side pixels on its longer side when it
    is larger (caption.max_image_side), else as it is (also when it does not decode: the server answers that)."""
    if max_side is None:
        return data, extension
    try:
        with Image.open(io.BytesIO(data)) as image:
            if max(image.size) <= max_side:
                return data, extension
            scale = max_side / max(image.size)
            size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
            buffer = io.BytesIO()
            image.convert("RGB").resize(size, Image.Resampling.LANCZOS).save(buffer, "JPEG", quality=95)
    except (OSError, ValueError, Image.DecompressionBombError):
        return data, extension
    return buffer.getvalue(), "jpg"


def data_url(data: bytes, extension: str) -> str:
    mime = MIME_TYPES.get(extension.lower(), "application/octet-stream")
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


class CaptionClient:
    """Sends one chat request per caption (plus an optional retry with another prompt) and classifies the answer."""

    def __init__(self, params: CaptionParams, session: aiohttp.ClientSession):
        self.params = params
        self.session = session
        self.filter = CaptionFilter(params.filters)
        self.transient_retries = 0

    def request_body(self, item: ImageItem, prompt_id: int) -> dict:
        """The chat completion body; `item` holds the image as it is sent (see `shrunk`)."""
        sampling = self.params.sampling
        content = [
            {"type": "image_url", "image_url": {"url": data_url(item.data, item.extension)}},
            {"type": "text", "text": self.params.prompts[prompt_id]},
        ]
        return {
            "model": self.params.served_model_name,
            "messages": [{"role": "user", "content": content}],
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "max_tokens": sampling.max_tokens,
            "seed": request_seed(sampling.seed, item.key, prompt_id),
        }

    async def answer(self, endpoint: "str | EngineProcess", body: dict) -> tuple[int, dict | str]:
        """(status, payload) of one chat completion: the JSON response on 200, else the error text."""
        if not isinstance(endpoint, str):
            return await asyncio.wait_for(endpoint.chat(body), self.params.request_timeout_s)
        timeout = aiohttp.ClientTimeout(total=self.params.request_timeout_s)
        async with self.session.post(f"{endpoint}/v1/chat/completions", json=body, timeout=timeout) as response:
            if response.status != 200:
                return response.status, (await response.text())[:300]
            return 200, await response.json()

    async def complete(self, endpoint: "str | EngineProcess", body: dict) -> Completion:
        """One chat completion on a server (its URL) or an in-process engine, retrying transient failures with
        exponential backoff."""
        last_error = ""
        for attempt in range(self.params.retries + 1):
            if attempt:
                self.transient_retries += 1
                delay = self.params.backoff_s * 2 ** (attempt - 1)
                await asyncio.sleep(min(delay, self.params.backoff_max_s))
            try:
                status, payload = await self.answer(endpoint, body)
            except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, asyncio.TimeoutError,
                    EngineGone) as err:
                last_error = f"{type(err).__name__}: {err}"
                continue
            if status in TRANSIENT_STATUS:
                last_error = f"HTTP {status}: {payload}"
                continue
            if status != 200:
                if is_context_error(status, payload):  # every request would fail alike: stop now
                    raise ContextLengthError(
                        f"{MAX_MODEL_LEN_KEY}: the server refused a request as longer than its context "
                        f"(HTTP 400: {' '.join(payload.split())}); image tokens + prompt + "
                        f"caption.sampling.max_tokens must fit")
                raise PermanentRequestError(f"HTTP {status}: {payload}")
            choice = payload["choices"][0]
            usage = payload.get("usage") or {}
            return Completion(
                text=(choice["message"].get("content") or "").strip(),
                finish_reason=choice.get("finish_reason"),
                tokens=int(usage.get("completion_tokens", 0)),
            )
        raise CaptionServiceError(
            f"{endpoint}: gave up after {self.params.retries + 1} attempts; last error: {last_error}")

    async def caption(self, endpoint: "str | EngineProcess", item: ImageItem,
                      caption_index: int) -> tuple[CaptionResult, int]:
        """Write caption `caption_index` of one image; returns it and the tokens generated for it (all attempts)."""
        generated = 0
        if self.params.max_image_side is not None:  # decoding is CPU work: off the event loop
            data, extension = await asyncio.to_thread(shrunk, item.data, item.extension, self.params.max_image_side)
            item = ImageItem(item.shard, item.key, data, extension)
        for prompt_id in caption_prompt_ids(self.params, item.key, caption_index):
            try:
                completion = await self.complete(endpoint, self.request_body(item, prompt_id))
            except PermanentRequestError as err:
                tqdm.write(f"caption: {item.shard}/{item.key} #{caption_index} failed: {err}")
                return CaptionResult(item.shard, item.key, caption_index, "", prompt_id, None, 0, "failed"), generated
            generated += completion.tokens
            status = self.filter.classify(completion.text, completion.finish_reason)
            if status == "ok":
                break
        result = CaptionResult(item.shard, item.key, caption_index, completion.text, prompt_id,
                               completion.finish_reason, completion.tokens, status)
        return result, generated


async def caption_stream(
    params: CaptionParams,
    endpoints: "list[str | EngineProcess]",
    items: AsyncIterator[ImageItem],
    total: int,
    on_result: Callable[[CaptionResult], Awaitable[None]],
) -> dict:
    """Write `captions_per_image` captions of every item (`total` of them) on the endpoints; calls `on_result` once
    per caption. Returns request counters."""
    queue: asyncio.Queue[tuple[ImageItem, int] | None] = asyncio.Queue(maxsize=4 * params.concurrency * len(endpoints))
    workers = [endpoint for endpoint in endpoints for _ in range(params.concurrency)]
    connector = aiohttp.TCPConnector(limit=len(workers))
    started = time.monotonic()
    tokens = 0
    bar = tqdm(total=total * params.captions_per_image, unit="caption", desc="caption", smoothing=0.1, mininterval=1.0)

    async with aiohttp.ClientSession(connector=connector) as session:
        client = CaptionClient(params, session)

        async def worker(endpoint: "str | EngineProcess") -> None:
            nonlocal tokens
            while (request := await queue.get()) is not None:
                result, generated = await client.caption(endpoint, *request)
                tokens += generated
                await on_result(result)
                bar.update(1)
                bar.set_postfix(tok_s=f"{tokens / max(time.monotonic() - started, 1e-9):.0f}", refresh=False)

        async def feed() -> None:
            async for item in items:
                for caption_index in range(params.captions_per_image):
                    await queue.put((item, caption_index))
            for _ in workers:
                await queue.put(None)

        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(feed())
                for endpoint in workers:
                    group.create_task(worker(endpoint))
        except* (CaptionServiceError, ContextLengthError) as errors:
            raise errors.exceptions[0] from None
        finally:
            bar.close()
    return {"tokens": tokens, "transient_retries": client.transient_retries}
