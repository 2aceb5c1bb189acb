"""A request that cannot fit `caption.server.max_model_len` is refused before any server starts, and a server's
context-length refusal stops the stage at once; both name the key."""
import asyncio
import io
import time

import pytest

from core.cli import user_errors
from pipeline.caption.client import ImageItem, caption_stream
from pipeline.caption.context import ContextLengthError, check_context, count_request_tokens
from pipeline.params.caption import ServerOptions
from pipeline.caption.run import run
from tests.conftest import assert_user_error
from tests.vllm_fixtures import (  # noqa: F401
    raw_shards, tiny_captioners, tiny_params, toy_image, vllm_fleet, vllm_pids, vllm_server,
)

pytestmark = pytest.mark.slow


def test_llava_next_over_max_model_len_is_refused_before_any_server(tiny_captioners, raw_shards, tmp_path,
                                                                    capsys):  # noqa: F811
    params = tiny_params(model=str(tiny_captioners["llava_next"]), served_model_name="tiny-llava-next")
    before = set(vllm_pids())
    started = time.monotonic()

    def stage():
        with user_errors():
            run(params, raw_shards, tmp_path / "captions", tmp_path / "caption.json", tmp_path / "logs", 64)

    line = assert_user_error(capsys, stage, "caption.server.max_model_len: 512 is too small",
                             "a 64x64 image with the longest prompt is 1219 tokens",
                             "+ caption.sampling.max_tokens 32 = 1251", "at least 1251")
    assert time.monotonic() - started < 60, line
    assert set(vllm_pids()) == before and not (tmp_path / "logs").exists(), "no server was started"
    assert not (tmp_path / "captions").exists(), "no work was done"


def test_request_sizes_per_architecture(tiny_captioners):  # noqa: F811
    """Counted with each model's own processor: LLaVA-NeXT tiles a 64 px image into 1,176 tokens, Qwen2-VL resizes it
    to 56 px (4 tokens); 1219 is what vLLM reports as prompt_tokens for the longest default prompt."""
    llava_next = tiny_params(model=str(tiny_captioners["llava_next"]), server=ServerOptions(max_model_len=2048))
    assert count_request_tokens(llava_next, 64).prompt_tokens == 1219
    assert "1219 prompt + 32 max_tokens = 1251 tokens" in check_context(llava_next, 64)
    qwen = tiny_params(model=str(tiny_captioners["qwen2_vl"]))
    assert count_request_tokens(qwen, 64).prompt_tokens < 100
    assert "<= caption.server.max_model_len 512" in check_context(qwen, 64)
    smaller = tiny_params(model=str(tiny_captioners["qwen2_vl"]), server=ServerOptions(
        mm_processor_kwargs={"max_pixels": 28 * 28}))
    assert count_request_tokens(smaller, 256).prompt_tokens < count_request_tokens(qwen, 256).prompt_tokens


def test_check_is_skipped_where_it_cannot_run(tiny_captioners):  # noqa: F811
    assert "skipped (caption.endpoints" in check_context(tiny_params(endpoints=["http://h:8000"]), 64)
    assert "skipped (caption.model org/name is not a local folder" in check_context(tiny_params(model="org/name"), 64)
    assert "skipped (download.resize_mode: no" in check_context(tiny_params(), None)


def test_model_without_chat_template_names_the_key(tiny_captioners, tmp_path):  # noqa: F811
    bare = tmp_path / "bare"
    bare.mkdir()
    for file in tiny_captioners["qwen2_vl"].iterdir():
        if file.name != "chat_template.jinja":
            (bare / file.name).write_bytes(file.read_bytes())
    with pytest.raises(ContextLengthError, match="caption.server.chat_template: caption.model .* has no chat template"):
        check_context(tiny_params(model=str(bare)), 64)
    template = tmp_path / "template.jinja"
    template.write_text((tiny_captioners["qwen2_vl"] / "chat_template.jinja").read_text())
    assert "<= caption.server.max_model_len" in check_context(
        tiny_params(model=str(bare), server=ServerOptions(chat_template=str(template))), 64)


def test_server_context_refusal_stops_the_run_naming_the_key(vllm_server):  # noqa: F811
    """A prompt longer than the session server's 512 tokens: vLLM answers HTTP 400, the run stops on the first."""
    params = tiny_params(prompts=[" ".join(["describe every shape"] * 300)])

    def png(i: int) -> bytes:
        buffer = io.BytesIO()
        toy_image(i).save(buffer, "PNG")
        return buffer.getvalue()

    async def items():
        for i in range(8):
            yield ImageItem("00000", f"{i:09d}", png(i), "png")

    results = []

    async def collect(result):
        results.append(result)

    with pytest.raises(ContextLengthError, match="caption.server.max_model_len: the server refused a request as "
                                                 "longer than its context"):
        asyncio.run(caption_stream(params, [vllm_server], items(), 8, collect))
    assert not results
