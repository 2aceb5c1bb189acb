"""Headless Chromium with the network off, for the pages users open from disk (plots, gallery, search results)."""
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

CHROMIUM = shutil.which("chromium-headless-shell") or shutil.which("chromium")


def offline(*args: str) -> subprocess.CompletedProcess:
    """Headless Chromium in a network namespace of its own (no interface but a down loopback)."""
    return subprocess.run(["unshare", "-rn", CHROMIUM, "--no-sandbox", "--disable-gpu", "--virtual-time-budget=3000",
                           *args], capture_output=True, text=True, timeout=120)


def need_chromium() -> None:
    """Skip, saying why, where no headless Chromium can run offline."""
    if CHROMIUM is None:
        pytest.skip("no headless Chromium (Debian: apt-get install chromium-headless-shell; .ci/run installs it)")
    if offline("--version").returncode:
        pytest.skip("cannot start Chromium in a network namespace of its own here (unshare -rn)")


def drawn_share(page: Path, shot: Path, size: str = "900,1000") -> float:
    """The share of a screenshot of ``page`` (opened offline) that is not white; asserts the browser ran cleanly."""
    done = offline(f"--window-size={size}", f"--screenshot={shot}", page.as_uri())
    assert done.returncode == 0, done.stderr[-2000:]
    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    return float((np.abs(pixels - 255).sum(axis=2) > 60).mean())


def console_messages(page: Path) -> list[str]:
    """What ``page`` writes to the browser console when opened offline (errors included)."""
    done = offline("--enable-logging=stderr", "--v=0", "--dump-dom", page.as_uri())
    return [line for line in done.stderr.splitlines() if ":CONSOLE" in line]


def outside_references(page: Path) -> list[str]:
    """Every resource ``page`` refers to that is not inside it (a src or href that is neither a data: URL nor an
    anchor): offline, each would be a failed request."""
    return [url for url in re.findall(r'(?:src|href)="([^"]*)"', page.read_text()) if not url.startswith(("data:", "#"))]
