"""Start N OpenAI-compatible vLLM servers (or adopt given endpoints), or N in-process engine workers
(`caption.engine: in_process`), and always stop what was started.

Each server or engine worker runs in its own process group with the vLLM environment's interpreter,
logs to `log_dir/vllm-<i>.log` (a server binds `host` on a free port; an engine worker speaks JSON lines over its
stdin/stdout, see engine_worker.py), and gets its own `CUDA_VISIBLE_DEVICES` when GPUs are listed. Stopping sends
SIGTERM to the group, then SIGKILL after a grace period; SIGTERM to this process is turned into SystemExit so that
the context manager's exit runs, and on Linux the server is also told to die with its parent. vLLM leaves its ZMQ
sockets and rendezvous files in the temporary folder even when it exits cleanly, so each fleet gives its servers a
folder of their own (`fixclip-vllm-<stage pid>-*`), removed when it stops; those of stage processes that were killed
are removed when the next fleet starts.
"""
import asyncio
import contextlib
import getpass
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from pipeline.caption import engine_worker
from pipeline.params.caption import CaptionParams

STOP_GRACE_S = 15.0
TMP_PREFIX = "fixclip-vllm-"
ENGINE_WORKER = Path(engine_worker.__file__)  # run with caption.python; imports only the standard library here
POLL_S = 0.5
LOG_TAIL_LINES = 40


class FleetError(RuntimeError):
    """A server could not be started or an endpoint cannot be reached."""


class EngineGone(ConnectionError):
    """The engine worker ended (killed or crashed) with requests in flight, or before a request was sent."""


class EngineProcess:
    """A started engine worker. `await chat(body)` sends one chat completion body and returns (status, payload) as a
    server's HTTP answer would: (200, the OpenAI response) or (400, the engine's refusal)."""

    def __init__(self, process: subprocess.Popen):
        self.process = process
        self.ready = threading.Event()
        self._lock, self._write_lock = threading.Lock(), threading.Lock()
        self._next_id = 0
        self._waiting: dict[int, tuple[asyncio.AbstractEventLoop, asyncio.Future]] = {}
        self._gone = False
        threading.Thread(target=self._read, name=f"engine-{process.pid}", daemon=True).start()

    def __str__(self) -> str:
        return f"engine worker (pid {self.process.pid})"

    async def chat(self, body: dict) -> tuple[int, dict | str]:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        with self._lock:
            if self._gone:
                raise EngineGone(f"{self} has exited")
            request_id, self._next_id = self._next_id, self._next_id + 1
            self._waiting[request_id] = (loop, future)
        try:
            await asyncio.to_thread(self._send, json.dumps({"id": request_id, "body": body}) + "\n")
            answer = await future
        finally:
            with self._lock:
                self._waiting.pop(request_id, None)
        return answer["status"], answer["body"]

    def _send(self, line: str) -> None:
        try:
            with self._write_lock:
                self.process.stdin.write(line)
                self.process.stdin.flush()
        except (BrokenPipeError, ValueError) as err:  # ValueError: stdin already closed
            raise EngineGone(f"{self} has exited") from err

    def _read(self) -> None:
        """Thread: hand each answer to the request waiting for it; at end of output fail whatever still waits."""
        for line in self.process.stdout:
            answer = json.loads(line)
            if answer.get("ready"):
                self.ready.set()
                continue
            with self._lock:
                waiter = self._waiting.pop(answer["id"], None)
            if waiter:
                _settle(*waiter, answer)
        with self._lock:
            self._gone, waiting, self._waiting = True, self._waiting, {}
        for loop, future in waiting.values():
            _settle(loop, future, EngineGone(f"{self} exited with requests in flight"))


def _settle(loop: asyncio.AbstractEventLoop, future: asyncio.Future, outcome: dict | BaseException) -> None:
    def settle() -> None:
        if not future.done():
            future.set_exception(outcome) if isinstance(outcome, BaseException) else future.set_result(outcome)
    with contextlib.suppress(RuntimeError):  # the request's event loop has closed: nobody waits any more
        loop.call_soon_threadsafe(settle)


@dataclass
class Server:
    """A started server (its base URL) or engine worker (its EngineProcess): `endpoint` is what the client sends to."""

    endpoint: "str | EngineProcess"
    process: subprocess.Popen
    log_path: Path

    def healthy(self) -> bool:
        return is_healthy(self.endpoint) if isinstance(self.endpoint, str) else self.endpoint.ready.is_set()


def free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def is_healthy(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=timeout) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def looks_like_path(model: str) -> bool:
    """True for a filesystem path; False for a hub id like `org/name`."""
    parts = Path(model).parts
    return model.startswith((".", "~", "/")) or len(parts) > 2 or (len(parts) > 1 and Path(parts[0]).exists())


def engine_flags(params: CaptionParams, model: str) -> list[str]:
    """The vLLM engine flags shared by a server and an in-process engine worker (vLLM's EngineArgs parses both)."""
    opts = params.server
    cmd = [
        "--model", model,
        "--served-model-name", params.served_model_name,
        "--dtype", opts.dtype,
        "--max-model-len", str(opts.max_model_len),
        "--tensor-parallel-size", str(opts.tensor_parallel_size),
        "--limit-mm-per-prompt", json.dumps(opts.limit_mm_per_prompt),
    ]
    for flag, value in [("--max-num-seqs", opts.max_num_seqs),
                        ("--max-num-batched-tokens", opts.max_num_batched_tokens),
                        ("--kv-cache-memory-bytes", opts.kv_cache_memory_bytes),
                        ("--gpu-memory-utilization", opts.gpu_memory_utilization),
                        ("--mm-processor-cache-gb", opts.mm_processor_cache_gb)]:
        if value is not None:
            cmd += [flag, str(value)]
    if opts.enforce_eager:
        cmd.append("--enforce-eager")
    if opts.enable_chunked_prefill is not None:  # False on CPU: see ServerOptions.enable_chunked_prefill
        cmd.append("--enable-chunked-prefill" if opts.enable_chunked_prefill else "--no-enable-chunked-prefill")
    if opts.mm_processor_kwargs:
        cmd += ["--mm-processor-kwargs", json.dumps(opts.mm_processor_kwargs)]
    return cmd + list(opts.extra_args)


def server_command(params: CaptionParams, python: str, model: str, port: int) -> list[str]:
    opts = params.server
    cmd = [python, "-m", "vllm.entrypoints.openai.api_server", "--host", params.host, "--port", str(port)]
    if opts.api_server_count is not None:
        cmd += ["--api-server-count", str(opts.api_server_count)]
    if opts.chat_template:
        cmd += ["--chat-template", str(Path(opts.chat_template).absolute())]
    return cmd + engine_flags(params, model)


def engine_command(params: CaptionParams, python: str, model: str) -> list[str]:
    """An in-process engine worker (caption.engine: in_process): pipeline/caption/engine_worker.py."""
    cmd = [python, str(ENGINE_WORKER)]
    if params.server.chat_template:
        cmd += ["--chat-template", str(Path(params.server.chat_template).absolute())]
    return cmd + ["--"] + engine_flags(params, model)


def die_with_parent() -> None:
    """Runs in the child before exec (Linux): SIGTERM it if the stage process dies without cleaning up."""
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def stop_process_group(process: subprocess.Popen, grace_s: float = STOP_GRACE_S) -> None:
    """SIGTERM the server's process group, wait, then SIGKILL whatever is left of it."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def is_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def servers_tmpdir() -> Path:
    """A new temporary folder for this process's servers, after removing those of stage processes that are gone."""
    for stale in Path(tempfile.gettempdir()).glob(f"{TMP_PREFIX}*"):
        owner = stale.name.removeprefix(TMP_PREFIX).split("-")[0]
        if owner.isdigit() and not is_running(int(owner)):
            shutil.rmtree(stale, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{os.getpid()}-"))


class VllmFleet:
    """Context manager yielding the base URLs of ready servers: `with VllmFleet(params, log_dir) as urls: ...`."""

    def __init__(self, params: CaptionParams, log_dir: Path):
        self.params = params
        self.log_dir = Path(log_dir)
        self.servers: list[Server] = []
        self._previous_sigterm = None
        # stop() may come from another thread while servers start (a Ray caption worker stopped mid start-up): the
        # lock makes "start one more server" and "stop them all" exclusive, and a stopped fleet starts no more.
        self._lock = threading.Lock()
        self._stopped = False
        self._tmpdir: Path | None = None

    def __enter__(self) -> "list[str | EngineProcess]":
        if self.params.endpoints:
            return self._check_endpoints()
        self._trap_sigterm()
        try:
            self._start_servers()
            self._wait_until_healthy()
        except BaseException:
            self.stop()
            raise
        return [server.endpoint for server in self.servers]

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        """Stop every server this fleet started (idempotent); the fleet starts none afterwards."""
        with self._lock:
            self._stopped = True
            servers, self.servers = self.servers, []
        for server in reversed(servers):
            stop_process_group(server.process)
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None
        if self._previous_sigterm is not None:
            signal.signal(signal.SIGTERM, self._previous_sigterm)
            self._previous_sigterm = None

    def _check_endpoints(self) -> list[str]:
        deadline = time.monotonic() + self.params.endpoint_timeout_s
        pending = list(self.params.endpoints)
        while pending:
            pending = [url for url in pending if not is_healthy(url)]
            if pending and time.monotonic() > deadline:
                raise FleetError(
                    f"caption.endpoints: {pending} not healthy (GET /health) within "
                    f"{self.params.endpoint_timeout_s:g} s (caption.endpoint_timeout_s)"
                )
            if pending:
                time.sleep(POLL_S)
        return list(self.params.endpoints)

    def _trap_sigterm(self) -> None:
        if threading.current_thread() is threading.main_thread():
            self._previous_sigterm = signal.signal(signal.SIGTERM, raise_system_exit)

    def _resolve(self) -> tuple[str, str, bool]:
        python = Path(self.params.python)
        if not (python.is_file() and os.access(python, os.X_OK)):
            raise FleetError(f"caption.python: {python} is not an executable interpreter (the vLLM environment)")
        model = Path(self.params.model).expanduser()
        is_local = model.exists()
        if not is_local and looks_like_path(self.params.model):
            raise FleetError(f"caption.model: {self.params.model} does not exist (not a local model dir)")
        return str(python.absolute()), str(model.absolute()) if is_local else self.params.model, is_local

    def _start_servers(self) -> None:
        python, model, is_local = self._resolve()
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._tmpdir = servers_tmpdir()
        # torch's compile cache stays where it is by default (under the temporary folder), kept across runs
        inductor = os.environ.get("TORCHINDUCTOR_CACHE_DIR",
                                  f"{tempfile.gettempdir()}/torchinductor_{getpass.getuser()}")
        env = os.environ | {"VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1", "TMPDIR": str(self._tmpdir),
                            "TORCHINDUCTOR_CACHE_DIR": inductor}
        if is_local:
            env["HF_HUB_OFFLINE"] = "1"
        tp = self.params.server.tensor_parallel_size
        for i in range(self.params.num_servers):
            server_env = dict(env)
            if self.params.gpus:
                server_env["CUDA_VISIBLE_DEVICES"] = ",".join(self.params.gpus[i * tp:(i + 1) * tp])
            if self.params.server.batch_invariant:
                server_env["VLLM_BATCH_INVARIANT"] = "1"
            log_path = self.log_dir / f"vllm-{i}.log"
            in_process = self.params.engine == "in_process"
            with self._lock, open(log_path, "wb") as log:
                if self._stopped:
                    raise FleetError("the fleet was stopped while its servers were starting")
                command = engine_command(self.params, python, model) if in_process else server_command(
                    self.params, python, model, port := free_port(self.params.host))
                process = subprocess.Popen(
                    command, stdin=subprocess.PIPE if in_process else subprocess.DEVNULL,
                    stdout=subprocess.PIPE if in_process else log, stderr=log if in_process else subprocess.STDOUT,
                    text=in_process, env=server_env, start_new_session=True,
                    preexec_fn=die_with_parent if sys.platform == "linux" else None,
                )
                endpoint = EngineProcess(process) if in_process else f"http://{self.params.host}:{port}"
                self.servers.append(Server(endpoint, process, log_path))

    def _wait_until_healthy(self) -> None:
        deadline = time.monotonic() + self.params.startup_timeout_s
        pending = list(self.servers)
        while pending:
            for server in pending:
                code = server.process.poll()
                if code is not None:
                    raise FleetError(
                        f"vLLM server for caption.model={self.params.model!r} exited with code {code} before "
                        f"becoming healthy; log {server.log_path}:\n{log_tail(server.log_path)}"
                    )
            pending = [server for server in pending if not server.healthy()]
            if pending and time.monotonic() > deadline:
                raise FleetError(
                    f"vLLM server(s) {[str(s.endpoint) for s in pending]} not healthy within "
                    f"{self.params.startup_timeout_s:g} s "
                    f"(caption.startup_timeout_s); log {pending[0].log_path}:\n{log_tail(pending[0].log_path)}"
                )
            if pending:
                time.sleep(POLL_S)


def raise_system_exit(signum, _frame) -> None:
    raise SystemExit(128 + signum)
