"""Reading and writing the flat tars of webdataset without `tarfile`'s per-member cost.

Reading: the regular-file members of a tar as (name, data offset, size), from the 512-byte headers alone. Plain
ustar/GNU headers are parsed here; any other member type (long names, pax headers, links) hands the whole tar to
`tarfile`, so every valid tar reads the same either way.

Writing: members with fixed metadata (mode 0644, uid/gid 0, empty owner names, mtime 0), byte-identical to what
`tarfile` writes in GNU format for the same names and data (a test keeps it so). The layout is POSIX ustar
(IEEE Std 1003.1, "pax" chapter: header fields, octal numbers, checksum over the header with the checksum field as
spaces, data padded to 512-byte blocks, two zero blocks at the end, the archive padded to 20-block records).
"""
import os
import tarfile
import zlib
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO, NamedTuple

BLOCK = 512
RECORD = 20 * BLOCK
REGULAR_TYPES = (b"0", b"\0")
NAME_FIELD = 100
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
            if not header or header == bytes(BLOCK):  # end of archive (tarfile also accepts a missing end block)
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


def _header_template() -> tuple[bytes, bytes, bytes, int]:
    """The constant parts of a GNU header for a regular file with the fixed metadata (as tarfile fills them), and
    their byte sum: (mode/uid/gid, mtime, type/link/magic/rest, sum with the checksum field as spaces)."""
    owner = b"0000644\0" + b"0000000\0" * 2
    mtime = b"00000000000\0"
    rest = b"0" + bytes(100) + b"ustar  \0" + bytes(BLOCK - 265)
    return owner, mtime, rest, sum(owner) + sum(mtime) + sum(rest) + 8 * 0x20


OWNER, MTIME, REST, CONSTANT_SUM = _header_template()


def _fast_header(name: bytes, size: int) -> bytes:
    """A GNU-format header for a regular file with the fixed metadata, as tarfile builds it."""
    size_field = b"%011o\0" % size
    checksum = CONSTANT_SUM + sum(name) + sum(size_field)
    return b"".join((name, bytes(NAME_FIELD - len(name)), OWNER, size_field, MTIME, b"%06o\0 " % checksum, REST))


def member_header(name: str, size: int) -> bytes:
    """The header block(s) of one member; names tarfile would extend (non-ASCII or > 99 bytes) go through it."""
    encoded = name.encode("utf-8", "surrogateescape")
    if len(encoded) < NAME_FIELD and encoded.isascii() and size <= MAX_SIZE:
        return _fast_header(encoded, size)
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, 0, 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info.tobuf(tarfile.GNU_FORMAT, "utf-8", "surrogateescape")


def write_members(stream: BinaryIO, members: Iterable[tuple[str, bytes]]) -> None:
    """A whole tar of (name, data) members, closed and padded as tarfile closes one."""
    written = 0
    for name, data in members:
        header, padding = member_header(name, len(data)), -len(data) % BLOCK
        stream.write(header)
        stream.write(data + bytes(padding) if padding else data)
        written += len(header) + len(data) + padding
    written += 2 * BLOCK
    stream.write(bytes(2 * BLOCK + -written % RECORD))
