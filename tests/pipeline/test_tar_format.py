"""Our tar reader and writer agree with `tarfile` byte for byte and member for member."""
import io
import tarfile

import pytest

from pipeline import tar_format

NAMES = ["a.jpg", "uid0123456789abcdef.long_2.txt", "x" * 99, "y" * 150, "caf\u00e9.json", "empty.txt"]


def _payload(i: int) -> bytes:
    return bytes(range(256)) * i + b"end" if i != 5 else b""


def _tarfile_bytes(members) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.GNU_FORMAT) as archive:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def test_writer_matches_tarfile_gnu_format():
    members = [(name, _payload(i)) for i, name in enumerate(NAMES)]
    ours = io.BytesIO()
    tar_format.write_tar(ours, [([n for n, _ in members[:2]], [d for _, d in members[:2]]), ([], []),
                                ([n for n, _ in members[2:]], [d for _, d in members[2:]])])
    assert ours.getvalue() == _tarfile_bytes(members)
    empty = io.BytesIO()
    tar_format.write_tar(empty, [])
    assert empty.getvalue() == _tarfile_bytes([])


@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_scan_matches_tarfile(tmp_path, fmt):
    path = tmp_path / "in.tar"
    names = NAMES if fmt != tarfile.USTAR_FORMAT else NAMES[:3]  # ustar has no long or non-ASCII names
    with tarfile.open(path, "w", format=fmt) as archive:
        for i, name in enumerate(names):
            info = tarfile.TarInfo(name)
            info.size = len(_payload(i))
            archive.addfile(info, io.BytesIO(_payload(i)))
        folder = tarfile.TarInfo("folder")
        folder.type = tarfile.DIRTYPE
        archive.addfile(folder)
    with tarfile.open(path) as archive:
        expected = [(m.name, m.offset_data, m.size, m.isfile()) for m in archive]
    assert [tuple(m) for m in tar_format.scan(path)] == expected
    data = path.read_bytes()
    for i, member in enumerate(tar_format.scan(path)[:len(names)]):
        assert data[member.offset:member.offset + member.size] == _payload(i)


def test_scan_refuses_corrupt_tars(tmp_path):
    path = tmp_path / "in.tar"
    path.write_bytes(_tarfile_bytes([("a.jpg", b"x" * 2000), ("b.jpg", b"y" * 10)]))
    data = path.read_bytes()
    (tmp_path / "cut.tar").write_bytes(data[:1024])
    with pytest.raises(tar_format.TarFormatError, match="cut short"):
        tar_format.scan(tmp_path / "cut.tar")
    flipped = bytearray(data)
    flipped[0] ^= 0x01  # the name changes, the stored checksum does not
    (tmp_path / "flipped.tar").write_bytes(bytes(flipped))
    with pytest.raises(tar_format.TarFormatError, match="checksum"):
        tar_format.scan(tmp_path / "flipped.tar")


def test_writer_to_a_file_in_several_gathered_writes(tmp_path):
    """A batch of more pieces than one gathered write takes, then another, memoryviews among the data, written to a
    real file."""
    members = [(f"{i:05d}.{'jpg' if i % 2 else 'txt'}", _payload(i % 7)) for i in range(tar_format.IOV_MAX + 5)]
    path = tmp_path / "out.tar"
    with open(path, "wb") as stream:
        tar_format.write_tar(stream, [([name for name, _ in part], [memoryview(data) for _, data in part])
                                      for part in (members[:-3], members[-3:])])
    assert path.read_bytes() == _tarfile_bytes(members)
