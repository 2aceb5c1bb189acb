"""Reading and writing the flat tars of webdataset without `tarfile`'s per-member cost.

Reading: the regular-file members of a tar as (name, data offset, size), from the 512-byte headers alone. Plain
ustar/GNU headers are parsed here; any other member type (long names, pax headers, links) hands the whole tar to
`tarfile`, so every valid tar reads the same either way.

Writing: members with fixed metadata (mode 0644, uid/gid 0, empty owner names, mtime 0), byte-identical to what
`tarfile` writes in GNU format for the same names and data (a test keeps it so). The layout is POSIX ustar
(IEEE Std 1003.1, "pax" chapter: header fields, octal numbers, checksum over the header with the checksum field as
spaces, data padded to 512-byte blocks, two zero blocks at the end, the archive padded to 20-block records).
Headers are built a batch at a time as one numpy array, and a batch goes to the OS in one gathered write (`writev`).
"""
import io
import os
import tarfile
import zlib
from collections.abc import Iterable
from itertools import islice
from pathlib import Path
from typing import BinaryIO, NamedTuple

import numpy as np

BLOCK = 512
RECORD = 20 * BLOCK
REGULAR_TYPES = (b"0", b"\0")
NAME_FIELD = 100
ZERO_BLOCK = bytes(BLOCK)
IOV_MAX = os.sysconf("SC_IOV_MAX") if hasattr(os, "sysconf") else 1024  # buffers per gathered write
BATCH = (IOV_MAX - 1) // 3  # members per gathered write: header, data, padding
MAX_SIZE = 8**11 - 1  # an 11-digit octal size field; larger members go through tarfile


class TarFormatError(ValueError):
    """A header whose checksum or numbers are wrong: the tar is corrupt."""


class Member(NamedTuple):
    name: str
    offset: int  # of the data, from the start of the file
    size: int
    is_file: bool


def _octal(field: bytes) -> int:
    digits = field.rstrip(b"\0 ").lstrip(b" ")
    try:
        return int(digits, 8) if digits else 0
    except ValueError as exc:
        raise TarFormatError(f"bad number {field!r} in a tar header") from exc


def _checksum_ok(header: bytes) -> bool:
    """The stored checksum equals the header's byte sum with the checksum field as spaces. Compared modulo 65521
    through zlib's Adler-32, whose low half is 1 + that sum mod 65521 (RFC 1950), a C loop instead of Python's."""
    stored = _octal(header[148:156])
    summed = (zlib.adler32(header[:148] + b" " * 8 + header[156:]) & 0xFFFF) - 1
    return stored % 65521 == summed % 65521


def scan(path: Path) -> list[Member]:
    """Every member of a tar, in order; `tarfile` reads any tar whose headers are not plain ustar/GNU."""
    members = []
    with open(path, "rb") as stream:
        length = os.fstat(stream.fileno()).st_size
        offset = 0
        while True:
            header = stream.read(BLOCK)
            if not header or header == ZERO_BLOCK:  # end of archive (tarfile also accepts a missing end block)
                return members
            if len(header) < BLOCK:
                raise TarFormatError(f"{path}: unexpected end of data at byte {offset}")
            if not _checksum_ok(header):
                raise TarFormatError(f"{path}: bad header checksum at byte {offset}")
            kind = header[156:157]
            if kind not in REGULAR_TYPES + (b"5",) or header[345:500].strip(b"\0"):  # prefix field: long path
                return _scan_with_tarfile(path)
            name = header[:NAME_FIELD].split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
            if kind == b"5":
                name = name.rstrip("/")  # as tarfile names folders
            size = _octal(header[124:136])
            members.append(Member(name, offset + BLOCK, size, kind in REGULAR_TYPES))
            offset += BLOCK + -(-size // BLOCK) * BLOCK
            if offset - (-size % BLOCK) > length:
                raise TarFormatError(f"{path}: member {name!r} is cut short")
            stream.seek(offset)


def _scan_with_tarfile(path: Path) -> list[Member]:
    with tarfile.open(path) as archive:
        return [Member(m.name, m.offset_data, m.size, m.isfile()) for m in archive]


def _header_template() -> np.ndarray:
    """A GNU header for a regular file with the fixed metadata (as tarfile fills them), with the name, size and
    checksum fields empty (the checksum field as spaces, as it is summed)."""
    owner = b"0000644\0" + b"0000000\0" * 2
    mtime = b"00000000000\0"
    rest = b"0" + bytes(100) + b"ustar  \0" + bytes(BLOCK - 265)
    return np.frombuffer(bytes(NAME_FIELD) + owner + bytes(12) + mtime + b" " * 8 + rest, np.uint8)


HEADER_TEMPLATE = _header_template()
SIZE_DIGITS = 3 * np.arange(10, -1, -1)  # bit shifts of an 11-digit octal number, most significant first
CHECKSUM_DIGITS = 3 * np.arange(5, -1, -1)


def member_headers(names: list[str], sizes: list[int]) -> list[bytes | memoryview]:
    """The header block(s) of each member, built as one array; names tarfile would extend (non-ASCII or > 99 bytes)
    and sizes beyond 11 octal digits go through tarfile."""
    encoded = [name.encode("utf-8", "surrogateescape") for name in names]
    length = np.asarray(sizes, np.int64).reshape(-1, 1)
    blocks = np.tile(HEADER_TEMPLATE, (len(names), 1))
    blocks[:, :NAME_FIELD] = np.array(encoded, f"S{NAME_FIELD}").view(np.uint8).reshape(-1, NAME_FIELD)
    blocks[:, 124:135] = 48 + (length >> SIZE_DIGITS & 7)  # "%011o\0"
    checksum = blocks.sum(axis=1, dtype=np.int64).reshape(-1, 1)
    blocks[:, 148:154] = 48 + (checksum >> CHECKSUM_DIGITS & 7)  # "%06o\0 "
    blocks[:, 154] = 0
    view = memoryview(blocks.tobytes())
    return [view[i * BLOCK:(i + 1) * BLOCK] if len(name) < NAME_FIELD and name.isascii() and size <= MAX_SIZE
            else _tarfile_header(names[i], size) for i, (name, size) in enumerate(zip(encoded, sizes))]


def _tarfile_header(name: str, size: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, 0, 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info.tobuf(tarfile.GNU_FORMAT, "utf-8", "surrogateescape")


def write_members(stream: BinaryIO, members: Iterable[tuple[str, bytes | memoryview]]) -> None:
    """A whole tar of (name, data) members, closed and padded as tarfile closes one. The members are read and handed
    to the OS a batch at a time, in one gathered write each; a stream without a file descriptor gets them joined."""
    members, length = iter(members), 0
    while batch := list(islice(members, BATCH)):
        pieces = []
        for header, (_, data) in zip(member_headers([n for n, _ in batch], [len(d) for _, d in batch]), batch):
            pieces += (header, data, ZERO_BLOCK[:-len(data) % BLOCK])
        length += sum(map(len, pieces))
        _write_pieces(stream, pieces)
    length += 2 * BLOCK
    _write_pieces(stream, [bytes(2 * BLOCK + -length % RECORD)])


def _write_pieces(stream: BinaryIO, pieces: list) -> None:
    try:
        fd = stream.fileno()
    except (AttributeError, io.UnsupportedOperation):
        stream.write(b"".join(pieces))
        return
    stream.flush()
    done = os.writev(fd, pieces)
    if done < sum(map(len, pieces)):  # a short write (a signal, a full disk): the rest one write at a time
        rest = memoryview(b"".join(pieces))[done:]
        while rest:
            rest = rest[os.write(fd, rest):]
