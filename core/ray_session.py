"""Being connected to Ray while a stage runs, without hanging on a bad address.

A stage joins the address its params give, else `RAY_ADDRESS`, else starts a local Ray instance (and stops it
afterwards); a connection the caller already holds is left open. Ray itself retries an address that does not answer
for minutes, so an address is first probed (a TCP connect) and the join is given CONNECT_TIMEOUT_S; either failure
names the key the address came from.
"""
import contextlib
import importlib.util
import os
import socket
import threading
from collections.abc import Iterator

from .cli import UserError

PROBE_TIMEOUT_S = 5.0
CONNECT_TIMEOUT_S = 45.0


class RayClusterError(RuntimeError):
    """The Ray cluster cannot be reached, cannot host a worker, or lost too many workers."""


def require_ray(key: str) -> None:
    """Before any work: fail naming `key` (a stage's `distributor`) when Ray is not installed."""
    if importlib.util.find_spec("ray") is None:
        raise UserError(f"{key}: ray is not installed (pip install -e '.[ray]')")


def probe(address: str, key: str) -> None:
    """Fail fast, naming `key`, when nothing listens at a `host:port` or `ray://host:port` address."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=PROBE_TIMEOUT_S).close()
    except (OSError, ValueError) as err:
        raise RayClusterError(f"{key}: no Ray cluster reachable at {address!r} ({err})") from None


def join(address: str, key: str) -> None:
    """ray.init(address) within CONNECT_TIMEOUT_S, after a probe unless the address is `auto`."""
    import ray

    if address != "auto":
        probe(address, key)
    outcome: dict = {}

    def connect() -> None:
        try:
            ray.init(address=address)
        except Exception as err:  # noqa: BLE001 (reported below, with the key)
            outcome["error"] = err

    thread = threading.Thread(target=connect, daemon=True)
    thread.start()
    thread.join(CONNECT_TIMEOUT_S)
    if thread.is_alive() or "error" in outcome:
        reason = outcome.get("error") or f"no answer within {CONNECT_TIMEOUT_S:g} s"
        raise RayClusterError(f"{key}: cannot join the Ray cluster at {address!r}: {reason}")


def this_node() -> str:
    """The id of the Ray node this task or actor runs on (the id, not the address: nodes may share a machine)."""
    import ray

    return ray.get_runtime_context().get_node_id()


@contextlib.contextmanager
def ray_session(address: str | None, key: str | None, **local_options) -> Iterator[None]:
    """Connected to Ray inside the block: the caller's connection, `address` (from params `key`; None for a stage
    without one), `RAY_ADDRESS`, or a new local instance started with `local_options` (e.g. num_cpus)."""
    import ray

    if ray.is_initialized():
        yield
        return
    if address:
        join(address, key)
    elif os.environ.get("RAY_ADDRESS"):
        join(os.environ["RAY_ADDRESS"], f"RAY_ADDRESS ({key} is null)" if key else "RAY_ADDRESS")
    else:  # "local", not None: None would join any cluster already running on this machine
        ray.init(address="local", include_dashboard=False, **local_options)
    try:
        yield
    finally:
        ray.shutdown()
