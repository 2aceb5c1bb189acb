"""Shared fixtures: a loopback HTTP server with programmable routes, and a throwaway copy of this repository."""
import contextlib
import hashlib
import ipaddress
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
FIGURES: list[str] = []  # lines a test reports (e.g. the chaos test's kills), printed at the end of the run


def pytest_terminal_summary(terminalreporter):
    if FIGURES:
        terminalreporter.section("figures")
        for line in FIGURES:
            terminalreporter.write_line(line)


class Routes(dict):
    """path -> (status, content_type, body, delay_s); a 3xx body is the redirect's Location. `seen` lists the
    paths of every request the server received."""

    def __init__(self):
        super().__init__()
        self.seen: list[str] = []


def _handler(routes: Routes):
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's naming)
            routes.seen.append(self.path)
            status, content_type, body, delay = routes.get(self.path.split("?")[0], (404, "text/plain", b"not found", 0))
            if delay:
                time.sleep(delay)
            try:
                self.send_response(status)
                if 300 <= status < 400:
                    self.send_header("Location", body.decode())
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (timeout test)

        def log_message(self, *args):
            pass

    return Handler


@contextlib.contextmanager
def serve(routes: Routes, host: str = "127.0.0.1"):
    """A real HTTP server on the loopback address `host` (IPv4 or IPv6) serving `routes`; yields its port."""
    assert ipaddress.ip_address(host).is_loopback, "tests serve on loopback only"
    server_class = type("Server", (ThreadingHTTPServer,), {"address_family": socket.AF_INET6 if ":" in host
                                                           else socket.AF_INET, "daemon_threads": True})
    server = server_class((host, 0), _handler(routes))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def http_server():
    """A real HTTP server on 127.0.0.1; yields (base_url, routes) and stops it afterwards."""
    routes = Routes()
    with serve(routes) as port:
        yield f"http://127.0.0.1:{port}", routes


def full_params(override: dict) -> dict:
    """The repository's params.yaml with `override` merged in (mappings key by key), as a stage must read it: every
    key present."""
    from pipeline.profile import merge

    params = yaml.safe_load((REPO / "params.yaml").read_text())
    merge(params, override)
    return params


def free_port() -> int:
    """A loopback port with nothing listening: free to bind, and connections to it are refused."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def file_digests(folder: Path) -> dict[str, str]:
    """sha256 of every file under folder, by relative path: equal dicts mean byte-identical trees."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def raw_digests(folder: Path) -> dict[str, str]:
    """file_digests of a download folder less the timings .dvcignore keeps out of DVC's hash (its stats and run
    history): what two downloads of the same URLs must share."""
    return {name: digest for name, digest in file_digests(folder).items()
            if not name.endswith("_stats.json") and name != "runs.jsonl"}


def project_files() -> list[str]:
    """The repository's files as a fresh clone would have them (tracked + new, not ignored)."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            check=True, capture_output=True).stdout.decode().split("\0")
    return [f for f in listed if f and (REPO / f).is_file()]


def stage_env() -> dict:
    """Environment for running stages/dvc as a user would: the venv's `python` first on PATH."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["NO_ALBUMENTATIONS_UPDATE"] = "1"
    return env


@pytest.fixture
def repo_copy(tmp_path):
    """A temporary git repository holding a copy of the project without its data, outputs or dvc.lock."""
    return copy_project(tmp_path / "repo")


def copy_project(root: Path) -> Path:
    """repo_copy's repository, made at `root` (for fixtures of a wider scope); returns root."""
    skip = ("data/", "metrics/", "models/", "dvc.lock")
    inputs = ("models/extra/", "data/benchmarks/")  # inputs of the DAG (extra models, real benchmark data)
    for name in project_files():
        if name.startswith(skip) and not name.startswith(inputs):
            continue
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, root / name)
    env = stage_env()
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"],
                ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "copy"]):
        subprocess.run(cmd, cwd=root, check=True, env=env)
    return root


def run(cmd: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    """Run a command as a user would (venv on PATH); on failure show its output."""
    proc = subprocess.run(cmd, cwd=cwd, env=stage_env(), capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"{cmd} exited {proc.returncode}\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc


def assert_user_error(capsys, command, *names: str) -> str:
    """``command()`` ends as a user error: exit status 2 and one line on stderr (no traceback) naming each of
    ``names``; returns that line."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exited:
        command()
    line = capsys.readouterr().err.strip()
    assert exited.value.code == 2 and "\n" not in line and line.startswith("error: "), line
    assert all(name in line for name in names), line
    return line
