"""Reading and writing the flat tars of webdataset without `tarfile`'s per-member cost.

Reading: the regular-file members of a tar as (name, data offset, size), from the 512-byte headers alone, found by
hopping over each member's data and then checked and parsed as one array. Plain ustar/GNU headers are parsed here;
any other member type (long names, pax headers, links) hands the whole tar to `tarfile`, so every valid tar reads
the same either way.

Writing: members with fixed metadata (mode 0644, uid/gid 0, empty owner names, mtime 0), byte-identical to what
`tarfile` writes in GNU format for the same names and data (a test keeps it so). The layout is POSIX ustar
(IEEE Std 1003.1, "pax" chapter: header fields, octal numbers, checksum over the header with the checksum field as
spaces, data padded to 512-byte blocks, two zero blocks at the end, the archive padded to 20-block records).
Headers are built a batch at a time as one numpy array, and a batch goes to the OS in gathered writes (`writev`).
"""
import io
import mmap
import os
import tarfile
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO, NamedTuple

import numpy as np

BLOCK = 512
RECORD = 20 * BLOCK
REGULAR_TYPES = (b"0", b"\0")
DIRECTORY = ord("5")
PLAIN_TYPES = [*map(ord, REGULAR_TYPES), DIRECTORY]
NAME_FIELD = 100
ZERO_BLOCK = bytes(BLOCK)
IOV_MAX = os.sysconf("SC_IOV_MAX") if hasattr(os, "sysconf") else 1024  # buffers per gathered write
MAX_SIZE = 8**11 - 1  # an 11-digit octal size field; larger members go through tarfile


class TarFormatError(ValueError):
    """A header whose checksum or numbers are wrong: the tar is corrupt."""


Data = bytes | memoryview


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


def scan(path: Path) -> list[Member]:
    """Every member of a tar, in order; `tarfile` reads any tar whose headers are not plain ustar/GNU. The headers
    are found by hopping over each member's data on a memory map; their checksums, types and names are then read
    as one array."""
    with open(path, "rb") as stream:
        length = os.fstat(stream.fileno()).st_size
        if not length:
            return []
        with mmap.mmap(stream.fileno(), 0, access=mmap.ACCESS_READ) as data:
            headers, starts, sizes, stored, problem = _hop(data, length)
    block = np.frombuffer(b"".join(headers), np.uint8).reshape(-1, BLOCK)
    wrong = np.flatnonzero(~_checksums_match(block, np.asarray(stored, np.int64)))
    if len(wrong):
        raise TarFormatError(f"{path}: bad header checksum at byte {starts[wrong[0]]}")
    if problem:
        raise TarFormatError(f"{path}: {problem}")
    kinds = block[:, 156]
    if not np.isin(kinds, PLAIN_TYPES).all() or block[:, 345:500].any():  # other types; prefix field: long path
        return _scan_with_tarfile(path)
    fields = np.ascontiguousarray(block[:, :NAME_FIELD]).view(f"S{NAME_FIELD}").ravel().tolist()
    names = [_name(field) for field in fields]
    is_file = (kinds != DIRECTORY).tolist()
    names = [name if file else name.rstrip("/") for name, file in zip(names, is_file)]  # as tarfile names folders
    return list(map(Member, names, [start + BLOCK for start in starts], sizes, is_file))


def _name(field: bytes) -> str:
    """A header's name field as tarfile reads it: up to the first NUL, undecodable bytes kept as surrogates."""
    return field.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")


def _checksums_match(block: np.ndarray, stored: np.ndarray) -> np.ndarray:
    """Per header: the stored checksum is its byte sum with the checksum field as spaces, bytes summed unsigned or
    (as some old writers did, and tarfile accepts) signed."""
    def summed(headers: np.ndarray, kind: type) -> np.ndarray:
        spaces = 8 * ord(" ")  # the checksum field itself counts as eight spaces
        return (headers.sum(axis=1, dtype=kind) - headers[:, 148:156].sum(axis=1, dtype=kind)).astype(np.int64) + spaces

    match = stored == summed(block, np.uint32)
    wrong = np.flatnonzero(~match)
    match[wrong] = stored[wrong] == summed(block[wrong].view(np.int8), np.int32)
    return match


def _hop(data: mmap.mmap, length: int) -> tuple[list[bytes], list[int], list[int], list[int], str | None]:
    """(headers, their offsets, member sizes, stored checksums, the problem that ended the walk or None), walking
    from header to header by each member's size up to the end-of-archive block (or the end of the file, which
    tarfile also accepts)."""
    headers, starts, sizes, stored = [], [], [], []
    offset = 0
    while offset < length:
        header = data[offset:offset + BLOCK]
        if header == ZERO_BLOCK:
            break
        if len(header) < BLOCK:
            return headers, starts, sizes, stored, f"unexpected end of data at byte {offset}"
        try:
            checksum, size = _octal(header[148:156]), _octal(header[124:136])
        except TarFormatError as exc:
            return headers, starts, sizes, stored, str(exc)
        headers.append(header)
        starts.append(offset)
        stored.append(checksum)
        sizes.append(size)
        offset += BLOCK + size
        if offset > length:
            return headers, starts, sizes, stored, f"member {_name(header[:NAME_FIELD])!r} is cut short"
        offset += -size % BLOCK
    return headers, starts, sizes, stored, None


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


def member_headers(encoded: list[bytes], sizes: list[int]) -> np.ndarray:
    """The header block of each member (encoded name, size) as one (members, 512) array; only right for names
    under 100 ASCII bytes and sizes within 11 octal digits (see `_gaps`)."""
    length = np.asarray(sizes, np.int64).reshape(-1, 1)
    blocks = np.tile(HEADER_TEMPLATE, (len(encoded), 1))
    blocks[:, :NAME_FIELD] = np.array(encoded, f"S{NAME_FIELD}").view(np.uint8).reshape(-1, NAME_FIELD)
    blocks[:, 124:135] = 48 + (length >> SIZE_DIGITS & 7)  # "%011o\0"
    checksum = blocks.sum(axis=1, dtype=np.int64).reshape(-1, 1)
    blocks[:, 148:154] = 48 + (checksum >> CHECKSUM_DIGITS & 7)  # "%06o\0 "
    blocks[:, 154] = 0
    return blocks


def _plain(name: bytes, size: int) -> bool:
    """A member whose header fits one block as built here; tarfile extends the others (long or non-ASCII names)."""
    return len(name) < NAME_FIELD and name.isascii() and size <= MAX_SIZE


def _gaps(names: list[str], sizes: list[int], pad: int) -> list[Data]:
    """Per member, the bytes before its data: the previous member's padding (`pad` for the first) and its header.
    Built as one buffer, unless a member needs tarfile's extended headers."""
    encoded = [name.encode("utf-8", "surrogateescape") for name in names]
    blocks = member_headers(encoded, sizes)
    pads = [pad] + [-size % BLOCK for size in sizes[:-1]]
    if not all(map(_plain, encoded, sizes)):
        return [ZERO_BLOCK[:before] + (bytes(block) if _plain(name, size) else _tarfile_header(names[i], size))
                for i, (name, size, before, block) in enumerate(zip(encoded, sizes, pads, blocks))]
    rows = np.zeros((len(names), 2 * BLOCK), np.uint8)  # row i: a zero block, then header i
    rows[:, BLOCK:] = blocks
    view = memoryview(rows.reshape(-1))
    return [view[row + BLOCK - before:row + 2 * BLOCK] for row, before in zip(range(0, rows.size, 2 * BLOCK), pads)]


def _tarfile_header(name: str, size: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, 0, 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info.tobuf(tarfile.GNU_FORMAT, "utf-8", "surrogateescape")


def write_tar(stream: BinaryIO, batches: Iterable[tuple[list[str], list[Data]]]) -> None:
    """A whole tar of the batches' members (names, data), closed and padded as tarfile closes one. A batch goes to
    the OS in gathered writes of its data and the bytes between them (padding and the next header), so only the
    current batch is in memory; a stream without a file descriptor gets it joined."""
    length, pad = 0, 0  # pad: the zeros the last member's data still needs
    for names, datas in batches:
        if not names:
            continue
        sizes = [len(data) for data in datas]
        gaps = _gaps(names, sizes, pad)
        length += sum(map(len, gaps)) + sum(sizes)
        pad = -sizes[-1] % BLOCK
        _write_pieces(stream, [piece for pair in zip(gaps, datas) for piece in pair])
    length += pad + 2 * BLOCK
    _write_pieces(stream, [bytes(pad + 2 * BLOCK + -length % RECORD)])


def _write_pieces(stream: BinaryIO, pieces: list) -> None:
    try:
        fd = stream.fileno()
    except (AttributeError, io.UnsupportedOperation):
        stream.write(b"".join(pieces))
        return
    stream.flush()
    for start in range(0, len(pieces), IOV_MAX):
        chunk = pieces[start:start + IOV_MAX]
        done = os.writev(fd, chunk)
        if done < sum(map(len, chunk)):  # a short write (a signal, a full disk): the rest one write at a time
            rest = memoryview(b"".join(chunk))[done:]
            while rest:
                rest = rest[os.write(fd, rest):]
