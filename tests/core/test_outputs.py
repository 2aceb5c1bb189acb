"""Stage outputs appear whole or not at all, with the permissions any other file of the user would get."""
import os
import stat

import pytest

from core.outputs import atomic_path, write_json


def test_written_file_follows_umask(tmp_path):
    old = os.umask(0o022)
    try:
        write_json(tmp_path / "m.json", {"a": 1})
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "m.json").stat().st_mode) == 0o644


def test_failed_write_leaves_old_file_and_no_temp(tmp_path):
    write_json(tmp_path / "m.json", {"a": 1})
    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "m.json") as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed mid-write")
    assert (tmp_path / "m.json").read_text().strip().startswith("{") and '"a": 1' in (tmp_path / "m.json").read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]
