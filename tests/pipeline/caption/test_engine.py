"""caption.engine: in_process — vLLM's engine in a worker process of the vLLM environment, the same client path."""
import subprocess

import pyarrow.parquet as pq
import pytest

from pipeline.caption.client import CaptionServiceError, ImageItem
from pipeline.caption.context import ContextLengthError
from pipeline.caption.fleet import VllmFleet, engine_command, engine_flags, server_command
from pipeline.caption.run import run
from pipeline.params.caption import ServerOptions
from tests.pipeline.caption.test_run import (
    assert_counts_add_up, caption_items, jpeg, raw_keys, run_killed_after_first_shard,
)
from tests.vllm_fixtures import (  # noqa: F401
    REPO, VLLM_PYTHON, raw_shards, tiny_params, vllm_fleet, vllm_pids, vllm_server,
)


def test_in_process_refuses_endpoints_and_api_servers():
    with pytest.raises(ValueError, match="engine: in_process starts its own engines"):
        tiny_params(engine="in_process", endpoints=["http://127.0.0.1:8000"])
    with pytest.raises(ValueError, match="server.api_server_count"):
        tiny_params(engine="in_process", server=ServerOptions(api_server_count=2))


def test_server_and_engine_worker_get_the_same_engine_flags(tmp_path):
    template = tmp_path / "t.jinja"
    template.write_text("{{ messages }}")
    params = tiny_params(server=ServerOptions(api_server_count=2, max_num_batched_tokens=4096,
                                              chat_template=str(template)))
    flags = engine_flags(params, "m")
    server, engine = server_command(params, "python", "m", 8000), engine_command(params, "python", "m")
    assert server[-len(flags):] == flags and engine[-len(flags):] == flags and engine[-len(flags) - 1] == "--"
    assert server[server.index("--api-server-count") + 1] == "2" and "--api-server-count" not in engine
    assert engine[engine.index("--chat-template") + 1] == str(template)
    assert flags[flags.index("--mm-processor-cache-gb") + 1] == "0", "the processor cache is off by default"
    assert flags[flags.index("--max-num-batched-tokens") + 1] == "4096"


@pytest.mark.slow
def test_vllm_parses_every_engine_flag_we_pass():
    """The worker hands our flags to vLLM's own EngineArgs parser; a flag vLLM does not know would fail here."""
    params = tiny_params(server=ServerOptions(max_num_batched_tokens=4096, mm_processor_kwargs={"max_pixels": 784}))
    code = ("import json, sys; sys.path.insert(0, 'pipeline/caption'); import engine_worker; "
            "print(json.dumps(engine_worker.engine_kwargs(sys.argv[1:]), default=str))")
    done = subprocess.run([str(VLLM_PYTHON), "-c", code, *engine_flags(params, "assets/tiny_llava/model")],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    parsed = done.stdout.strip().splitlines()[-1]
    for expected in ('"max_num_batched_tokens": 4096', '"mm_processor_cache_gb": 0.0', '"enforce_eager": true',
                     '"max_model_len": 512'):
        assert expected in parsed


@pytest.fixture(scope="module")
def engine_fleet(tmp_path_factory):
    with VllmFleet(tiny_params(engine="in_process"), tmp_path_factory.mktemp("engine_logs")) as engines:
        yield engines


@pytest.mark.slow
def test_both_engines_write_the_same_captions(raw_shards, vllm_server, engine_fleet, tmp_path):  # noqa: F811
    """One request in flight (batch nondeterminism out of the way): the same captions, statuses and counts."""
    def stage(params, name):
        metrics = run(params, raw_shards, tmp_path / name, tmp_path / f"{name}.json", tmp_path / "logs")
        rows = {p.stem: pq.read_table(p).to_pylist() for p in sorted((tmp_path / name).glob("*.parquet"))}
        return metrics, rows

    served, server_rows = stage(tiny_params(endpoints=[vllm_server], concurrency=1), "server")
    engine, engine_rows = stage(tiny_params(engine="in_process", concurrency=1), "engine")
    n_images = sum(map(len, raw_keys(raw_shards).values()))
    assert_counts_add_up(engine, n_images)
    assert engine_rows == server_rows
    assert {k: engine[k] for k in ("ok", "failed", "captions", "caption_tokens")} == {
        k: served[k] for k in ("ok", "failed", "captions", "caption_tokens")}


@pytest.mark.slow
def test_an_image_the_engine_refuses_fails_that_caption_only(engine_fleet):
    items = [ImageItem("00000", "000000001", jpeg(1), "jpg"), ImageItem("00000", "000000002", b"not a jpeg", "jpg"),
             ImageItem("00000", "000000003", jpeg(3), "jpg")]
    results, _ = caption_items(tiny_params(engine="in_process", concurrency=2), engine_fleet, items)
    status = {r.key: r.status for r in results}
    assert status["000000002"] == "failed" and status["000000001"] != "failed" and status["000000003"] != "failed"


@pytest.mark.slow
def test_killed_engine_stops_the_stage_and_a_rerun_resumes(raw_shards, tmp_path, monkeypatch):  # noqa: F811
    out, before, finished_first = tmp_path / "captions", set(vllm_pids()), {}
    params = tiny_params(engine="in_process", concurrency=1, retries=1, backoff_s=0.1)
    with pytest.raises(CaptionServiceError, match="engine worker"):
        run_killed_after_first_shard(params, raw_shards, out, tmp_path, monkeypatch, finished_first)
    assert not (set(vllm_pids()) - before), "the killed engine's processes are gone"
    metrics = run(params, raw_shards, out, tmp_path / "caption.json", tmp_path / "logs")
    assert metrics["shards_skipped"] == len(finished_first) == 1
    assert {p.stem: pq.read_table(p).column("key").to_pylist() for p in sorted(out.glob("*.parquet"))} == raw_keys(
        raw_shards)
    assert {name: (out / name).stat().st_mtime_ns for name in finished_first} == finished_first


@pytest.mark.slow
def test_a_request_over_the_engine_context_stops_the_run_naming_the_key(engine_fleet):
    """As with a server (test_context.py): the engine refuses a prompt over its 512 tokens, the run stops at once,
    and the engine itself survives the refusal."""
    items = [ImageItem("00000", f"{i:09d}", jpeg(i), "jpg") for i in range(4)]
    too_long = tiny_params(engine="in_process", prompts=[" ".join(["describe every shape"] * 300)])
    with pytest.raises(ContextLengthError, match="caption.server.max_model_len: the server refused a request as "
                                                 "longer than its context"):
        caption_items(too_long, engine_fleet, items)
    results, _ = caption_items(tiny_params(engine="in_process"), engine_fleet, items[:1])
    assert results[0].status != "failed" and results[0].caption
