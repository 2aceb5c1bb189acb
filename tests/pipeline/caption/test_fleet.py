"""vLLM fleet failures: clear errors within bounded time, and no server process left behind."""
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from pipeline.caption.client import CaptionServiceError, ImageItem, caption_stream
from pipeline.caption.fleet import TMP_PREFIX, FleetError, VllmFleet, free_port, server_command, servers_tmpdir
from pipeline.params.caption import ServerOptions
from tests.vllm_fixtures import REPO, tiny_params, vllm_fleet, vllm_pids  # noqa: F401

pytestmark = pytest.mark.slow


def stray_pids(fleet: VllmFleet) -> dict[int, str]:
    """vLLM processes that do not belong to the session server's process group."""
    session_group = fleet.servers[0].process.pid
    stray = {}
    for pid, cmdline in vllm_pids().items():
        try:
            if os.getpgid(pid) != session_group:
                stray[pid] = cmdline
        except ProcessLookupError:
            pass
    return stray


def test_unreachable_endpoint_fails_fast(tmp_path):
    params = tiny_params(endpoints=[f"http://127.0.0.1:{free_port('127.0.0.1')}"], endpoint_timeout_s=2)
    started = time.monotonic()
    with pytest.raises(FleetError, match="caption.endpoints"):
        with VllmFleet(params, tmp_path):
            pass
    assert time.monotonic() - started < 10


def test_endpoint_lost_mid_run_stops_with_clear_error():
    async def items():
        yield ImageItem("00000", "k", b"not an image", "jpg")

    async def ignore(_result):
        pass

    dead = f"http://127.0.0.1:{free_port('127.0.0.1')}"
    started = time.monotonic()
    with pytest.raises(CaptionServiceError, match="gave up after 3 attempts"):
        asyncio.run(caption_stream(tiny_params(), [dead], items(), 1, ignore))
    assert time.monotonic() - started < 10


def test_missing_model_path_fails_before_starting(tmp_path):
    params = tiny_params(model=str(tmp_path / "no_such_model"))
    with pytest.raises(FleetError, match="caption.model"):
        with VllmFleet(params, tmp_path):
            pass


def test_broken_model_fails_fast_with_log_tail(tmp_path, vllm_fleet):  # noqa: F811
    broken = tmp_path / "broken_model"
    broken.mkdir()
    (broken / "config.json").write_text('{"model_type": "not_a_model"}')
    params = tiny_params(model=str(broken), startup_timeout_s=120)
    started = time.monotonic()
    with pytest.raises(FleetError, match="exited with code") as error:
        with VllmFleet(params, tmp_path / "logs"):
            pass
    assert time.monotonic() - started < 90
    assert "log" in str(error.value) and (tmp_path / "logs" / "vllm-0.log").exists()
    assert not stray_pids(vllm_fleet)


def test_sigterm_during_startup_leaves_no_server(tmp_path, vllm_fleet):  # noqa: F811
    script = (
        "import sys, time\n"
        "from pipeline.caption.fleet import VllmFleet\n"
        "from tests.vllm_fixtures import tiny_params\n"
        "with VllmFleet(tiny_params(), sys.argv[1]):\n"
        "    time.sleep(600)\n"
    )
    stage = subprocess.Popen([sys.executable, "-c", script, str(tmp_path)], cwd=REPO)
    deadline = time.monotonic() + 60
    while not stray_pids(vllm_fleet) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert stray_pids(vllm_fleet), "the stage's server never started"
    assert list(Path(tempfile.gettempdir()).glob(f"{TMP_PREFIX}{stage.pid}-*")), "the servers' temporary folder"
    time.sleep(3)
    stage.send_signal(signal.SIGTERM)
    assert stage.wait(timeout=60) == 128 + signal.SIGTERM
    assert not stray_pids(vllm_fleet)
    assert not list(Path(tempfile.gettempdir()).glob(f"{TMP_PREFIX}{stage.pid}-*"))


def test_a_killed_stage_servers_temporary_folder_goes_at_the_next_start(tmp_path, monkeypatch):
    """vLLM leaves sockets in its temporary folder: that of a stage process that is gone is removed when a fleet
    starts; that of a running one is kept."""
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr(tempfile, "tempdir", None)
    gone = subprocess.Popen(["true"])
    gone.wait()
    stale, alive = tmp_path / f"{TMP_PREFIX}{gone.pid}-abc", tmp_path / f"{TMP_PREFIX}{os.getppid()}-def"
    for folder in (stale, alive):
        folder.mkdir()
        (folder / "socket-like").write_bytes(b"")
    new = servers_tmpdir()
    assert not stale.exists() and alive.exists() and new.parent == tmp_path and new.name.startswith(
        f"{TMP_PREFIX}{os.getpid()}-")


def test_server_flags_for_chunked_prefill_chat_template_and_processor(tmp_path):
    """CPU default: chunked prefill off (seeded chunked prefill crashes vLLM's CPU engine); None leaves vLLM's."""
    template = tmp_path / "t.jinja"
    template.write_text("{{ messages }}")
    cmd = server_command(tiny_params(), "python", "m", 8000)
    assert "--no-enable-chunked-prefill" in cmd and "--chat-template" not in cmd
    cmd = server_command(tiny_params(server=ServerOptions(enable_chunked_prefill=None, chat_template=str(template),
                                                          mm_processor_kwargs={"max_pixels": 784})), "python", "m", 1)
    assert "--no-enable-chunked-prefill" not in cmd and "--enable-chunked-prefill" not in cmd
    assert cmd[cmd.index("--chat-template") + 1] == str(template)
    assert json.loads(cmd[cmd.index("--mm-processor-kwargs") + 1]) == {"max_pixels": 784}
