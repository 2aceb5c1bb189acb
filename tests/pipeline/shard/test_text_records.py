"""Text records: what a planning worker packs, a writing worker reads back byte for byte."""
from pipeline.shard import text_records


def test_records_round_trip_by_offset_and_size():
    samples = [["Long caption. Two.", "caf\u00e9 \U0001f600", '{"key": "a"}'], ["", "short", "{}"],
               ["x" * 5000, "", ""]]
    data, offsets, sizes = text_records.pack(samples)
    assert len(data) == sum(sizes) and offsets == [0, sizes[0], sizes[0] + sizes[1]]
    for texts, offset, size in zip(samples, offsets, sizes):
        assert text_records.unpack(data[offset:offset + size], 3) == [text.encode() for text in texts]
    assert text_records.pack([]) == (b"", [], [])


def test_a_record_holds_any_number_of_texts():
    data, offsets, sizes = text_records.pack([["long", "long 0", "long 1", "long 2", "short", "{}"]])
    assert text_records.unpack(data, 6) == [b"long", b"long 0", b"long 1", b"long 2", b"short", b"{}"]
