"""The repository names no package-index host: set-up takes the index from the user's own pip configuration."""
import re
import subprocess

from tests.conftest import REPO

INDEX_HOSTS = re.compile(r"pypi\.org|pythonhosted\.org|https?://[^\s'\"]+/simple\b")


def test_no_tracked_file_names_an_index_host():
    files = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    named = []
    for name in files:
        path = REPO / name
        if not path.is_file() or path.stat().st_size > 1 << 20:
            continue
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue
        named += [f"{name}: {m.group()}" for m in INDEX_HOSTS.finditer(text)]
    assert not named, named
