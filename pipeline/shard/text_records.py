"""The texts of a raw shard's kept samples, as the worker that planned them hands them to the workers that write:
one scratch file of records, each the byte lengths of its texts (little-endian uint32) then the UTF-8 texts, read
back by (offset, size). The stage's own process then holds two numbers per sample instead of its texts."""
import struct
from itertools import accumulate


def pack(samples: list[list[str]]) -> tuple[bytes, list[int], list[int]]:
    """(the records of the samples' texts, each record's offset, its size); every sample has as many texts."""
    if not samples:
        return b"", [], []
    lengths = struct.Struct(f"<{len(samples[0])}I")
    records = []
    for texts in samples:
        encoded = [text.encode() for text in texts]
        records.append(lengths.pack(*map(len, encoded)) + b"".join(encoded))
    sizes = [len(record) for record in records]
    return b"".join(records), [0, *accumulate(sizes[:-1])], sizes


def unpack(record: bytes, count: int) -> list[bytes]:
    """The `count` texts of one record, UTF-8 encoded."""
    texts, start = [], 4 * count
    for length in struct.unpack_from(f"<{count}I", record):
        texts.append(record[start:start + length])
        start += length
    return texts
