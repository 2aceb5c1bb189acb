"""A user's URL list is normalised with every dropped row counted by reason."""
import hashlib
import json
import sys

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.source import url_list
from pipeline.params import ParamsError
from pipeline.params.source import UrlListParams
from pipeline.source.url_list import WHITESPACE, detect_format, is_valid_url, normalise

ROWS = [
    ("https://example.org/a.jpg", "a cat"),
    ("  https://example.org/b.jpg ", "a dog"),  # kept, stripped
    ("https://example.org/a.jpg", "dup"),  # duplicate of the first
    ("", "empty"),
    ("not a url", "invalid"),
    ("ftp://example.org/c.jpg", "unsupported scheme"),
    ("http:///nohost.jpg", "no host"),
    ("file:///data/d.png", "local file"),
    ("https://example.org/e.jpg", None),  # no caption -> empty alt text
]

# Rows meant to trip a streaming reader: duplicates far apart, whitespace str.strip() removes but ASCII trimming
# would not, URLs only urlparse can judge, quotes and line breaks in captions, nulls in an int column.
TRICKY = [
    ("https://example.org/a.jpg", "a cat", 640),
    ("\u3000https://example.org/b.jpg\xa0", "unicode spaces around", 480),
    ("", "empty", None),
    (None, "missing url", 1),
    ("  \t ", "blank", 2),
    ("https://example.org/a.jpg", "duplicate of the first", 3),
    ("HTTPS://Example.org/C.jpg", "upper-case scheme", 4),
    ("https://example.org/has space.jpg", "inner space", 5),
    ("\x01https://example.org/d.jpg", "control character: urlparse drops it", 6),
    ("http://[::1]/e.png", "IPv6 host", 7),
    ("https://例え.jp/画像.png", "non-ASCII host", 8),
    ("file:///data/f.png", "local file", 9),
    ("file:", "file without a path", 10),
    ("http:///nohost.jpg", "no host", None),
    ("https://user:pw@example.org:8080/g?q=1#frag", 'quotes " and, commas', 11),
    ("https://example.org/h.jpg", "line\nbreak", 12),
    (" https://example.org/b.jpg", "duplicate once stripped", 13),
    ("mailto:someone@example.org", "other scheme", 14),
    ("https://example.org/a.jpg", None, 15),
    ("https://example.org/i.jpg", "", 16),
    ("https://example.org/h.jpg", "late duplicate", 17),
]


def _reference(params: UrlListParams, out):
    """The former in-memory normalise (whole list in pandas), written as the stage wrote it; returns the counts."""
    readers = {
        "csv": lambda p: pd.read_csv(p, dtype=str, keep_default_na=False),
        "tsv": lambda p: pd.read_csv(p, sep="\t", dtype=str, keep_default_na=False),
        "parquet": pd.read_parquet,
        "jsonl": lambda p: pd.read_json(p, lines=True, dtype=False),
    }
    frame = readers[detect_format(params.path, params.format)](params.path)
    counts = {"rows": len(frame)}
    urls = frame[params.url_col].map(lambda v: "" if v is None or v is pd.NA or v != v else str(v).strip())
    empty = urls == ""
    invalid = ~empty & ~urls.map(is_valid_url)
    duplicate = ~empty & ~invalid & urls.duplicated(keep="first")
    keep = ~(empty | invalid | duplicate)
    counts.update(dropped_empty=int(empty.sum()), dropped_invalid=int(invalid.sum()),
                  dropped_duplicate=int(duplicate.sum()))
    frame_out = pd.DataFrame({"url": urls[keep]})
    frame_out["uid"] = frame_out["url"].map(lambda url: hashlib.sha1(url.encode()).hexdigest()[:16])
    captions = frame.loc[keep, params.caption_col] if params.caption_col else pd.Series("", index=frame_out.index)
    frame_out["alt_text"] = captions.map(lambda v: "" if v is None or v is pd.NA or v != v else str(v))
    for col in params.keep_cols:
        frame_out[col] = frame.loc[keep, col]
    sampled_out = 0
    if params.max_samples is not None and len(frame_out) > params.max_samples:
        chosen = np.random.default_rng(params.seed).choice(len(frame_out), size=params.max_samples, replace=False)
        sampled_out = len(frame_out) - params.max_samples
        frame_out = frame_out.iloc[np.sort(chosen)]
    counts["dropped_sampling"] = sampled_out
    counts["urls"] = len(frame_out)
    frame_out.reset_index(drop=True).to_parquet(out, index=False)
    return counts


def _write(tmp_path, fmt, rows=ROWS, columns=("URL", "text")):
    frame = pd.DataFrame(rows, columns=list(columns)).assign(license=[f"cc{i}" for i in range(len(rows))])
    path = tmp_path / f"list.{fmt}"
    if fmt == "csv":
        frame.to_csv(path, index=False)
    elif fmt == "tsv":
        frame.to_csv(path, sep="\t", index=False)
    elif fmt == "parquet":
        frame.to_parquet(path)
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in frame.to_dict("records")))
    return path


def _write_tricky(tmp_path, variant):
    """TRICKY as csv, tsv, jsonl, or parquet written by pyarrow (width: int64 with nulls) or by pandas (Int64)."""
    if variant == "parquet-arrow":
        path = tmp_path / "tricky.parquet"
        pq.write_table(pa.table({name: [row[i] for row in TRICKY] for i, name in enumerate(["u", "c", "width"])}),
                       path)
        return path
    if variant == "parquet-pandas":
        path = tmp_path / "tricky.parquet"
        frame = pd.DataFrame(TRICKY, columns=["u", "c", "width"]).astype({"width": "Int64"})
        frame.to_parquet(path)
        return path
    if variant == "jsonl":
        path = tmp_path / "tricky.jsonl"
        path.write_text("".join(json.dumps(dict(zip(["u", "c", "width"], row))) + "\n" for row in TRICKY))
        return path
    return _write(tmp_path, variant, TRICKY, ("u", "c", "width"))


def _normalise(params, tmp_path, **kwargs):
    """Run normalise into a file; returns (the written frame, counts)."""
    out = tmp_path / "urls.parquet"
    counts = normalise(params, out, **kwargs)
    return pd.read_parquet(out), counts


def _assert_same_as_reference(params, tmp_path, batch_rows):
    ours, theirs = tmp_path / "ours.parquet", tmp_path / "reference.parquet"
    counts = normalise(params, ours, batch_rows=batch_rows)
    assert counts == _reference(params, theirs)
    dropped = sum(v for k, v in counts.items() if k.startswith("dropped_"))
    assert dropped + counts["urls"] == counts["rows"]
    got, want = pq.read_table(ours), pq.read_table(theirs)
    assert got.schema.equals(want.schema, check_metadata=True), (got.schema, want.schema)
    assert got.equals(want), (got.to_pandas(), want.to_pandas())
    return counts


@pytest.mark.parametrize("fmt", ["csv", "tsv", "parquet", "jsonl"])
def test_normalise_counts_every_row(tmp_path, fmt):
    path = _write(tmp_path, fmt)
    urls, counts = _normalise(UrlListParams(path=str(path), url_col="URL", caption_col="text", keep_cols=["license"]),
                              tmp_path)
    assert list(urls["url"]) == ["https://example.org/a.jpg", "https://example.org/b.jpg", "file:///data/d.png",
                                 "https://example.org/e.jpg"]
    assert list(urls["alt_text"]) == ["a cat", "a dog", "local file", ""]
    assert list(urls["license"]) == ["cc0", "cc1", "cc7", "cc8"]
    assert urls["uid"].is_unique and urls["uid"].str.len().eq(16).all()
    assert counts == {"rows": 9, "dropped_empty": 1, "dropped_invalid": 3, "dropped_duplicate": 1,
                      "dropped_sampling": 0, "urls": 4}
    dropped = sum(v for k, v in counts.items() if k.startswith("dropped_"))
    assert dropped + counts["urls"] == counts["rows"]


@pytest.mark.parametrize("variant", ["csv", "tsv", "parquet-arrow", "parquet-pandas", "jsonl"])
@pytest.mark.parametrize("batch_rows", [2, 5, 1000])
def test_streaming_matches_the_in_memory_reference(tmp_path, variant, batch_rows):
    path = _write_tricky(tmp_path, variant)
    fmt = variant.split("-")[0]
    extras = ["width", "license"] if fmt in ("csv", "tsv") else ["width"]
    params = UrlListParams(path=str(path), format=fmt, url_col="u", caption_col="c", keep_cols=extras)
    counts = _assert_same_as_reference(params, tmp_path, batch_rows)
    assert counts == {"rows": 21, "dropped_empty": 3, "dropped_invalid": 4, "dropped_duplicate": 4,
                      "dropped_sampling": 0, "urls": 10}


@pytest.mark.parametrize("fmt", ["csv", "tsv"])
def test_csv_read_in_blocks_smaller_than_the_list(tmp_path, monkeypatch, fmt):
    monkeypatch.setattr(url_list, "CSV_BLOCK_BYTES", 256)  # the reader's blocks end mid-list, not only our batches
    path = _write_tricky(tmp_path, fmt)
    params = UrlListParams(path=str(path), url_col="u", caption_col="c", keep_cols=["width", "license"])
    _assert_same_as_reference(params, tmp_path, batch_rows=1000)


@pytest.mark.parametrize("variant", ["csv", "parquet-arrow", "jsonl"])
def test_streaming_matches_the_reference_without_captions(tmp_path, variant):
    path = _write_tricky(tmp_path, variant)
    _assert_same_as_reference(UrlListParams(path=str(path), format=variant.split("-")[0], url_col="u",
                                            caption_col=None), tmp_path, batch_rows=4)


CSV_DIALECT = {
    "bom_and_crlf.csv": "\ufeffurl,caption\r\nhttps://a.org/x,c\r\n\r\nhttps://a.org/y,\"q\"\"uote\"\r\n",
    "blank_lines.csv": "url,caption\nhttps://a.org/x,a\n   \n\t\nhttps://a.org/y,b\n,\n",
    "one_column.csv": "url\nhttps://a.org/x\n\nhttps://a.org/x\n\"\"\nnot a url\n  \n",
    "header_only.csv": "url,caption\n",
    "no_final_newline.csv": "url,caption\nhttps://a.org/x,a\nhttps://a.org/z,b",
    "quoted_newline.tsv": "url\tcaption\n\"https://a.org/x\"\t\"multi\nline\ttab\"\nhttps://a.org/y\tplain\n",
}


@pytest.mark.parametrize("name", sorted(CSV_DIALECT))
def test_csv_dialect_is_read_as_pandas_read_it(tmp_path, name):
    path = tmp_path / name
    path.write_text(CSV_DIALECT[name], encoding="utf-8")
    caption = None if name == "one_column.csv" else "caption"
    _assert_same_as_reference(UrlListParams(path=str(path), caption_col=caption), tmp_path, batch_rows=2)


def test_jsonl_numbers_in_text_columns_are_printed_as_pandas_did(tmp_path):
    path = tmp_path / "numbers.jsonl"
    records = [{"url": 42, "caption": 7}, {"url": "https://example.org/a.jpg", "caption": 1.5},
               {"url": "https://example.org/b.jpg", "caption": None}]
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    counts = _assert_same_as_reference(UrlListParams(path=str(path), format="jsonl"), tmp_path, batch_rows=1)
    assert counts["dropped_invalid"] == 1 and counts["urls"] == 2


@pytest.mark.parametrize("max_samples,seed", [(1, 0), (5, 3), (9, 11), (10, 1)])
def test_max_samples_draw_is_unchanged(tmp_path, max_samples, seed):
    path = _write_tricky(tmp_path, "parquet-arrow")
    params = UrlListParams(path=str(path), url_col="u", caption_col="c", keep_cols=["width"],
                           max_samples=max_samples, seed=seed)
    counts = _assert_same_as_reference(params, tmp_path, batch_rows=3)
    assert counts["urls"] == min(max_samples, 10)


def test_max_samples_is_seeded_and_keeps_order(tmp_path):
    path = tmp_path / "many.csv"
    pd.DataFrame({"url": [f"https://example.org/{i}.jpg" for i in range(100)]}).to_csv(path, index=False)
    params = UrlListParams(path=str(path), caption_col=None, max_samples=10, seed=3)
    first, counts = _normalise(params, tmp_path)
    again, _ = _normalise(params, tmp_path)
    other, _ = _normalise(UrlListParams(path=str(path), caption_col=None, max_samples=10, seed=4), tmp_path)
    assert list(first["url"]) == list(again["url"]) != list(other["url"])
    numbers = [int(url.rsplit("/", 1)[1].removesuffix(".jpg")) for url in first["url"]]
    assert numbers == sorted(numbers)  # the list's own order survives sampling
    assert counts["dropped_sampling"] == 90 and counts["urls"] == 10


def test_a_list_without_any_valid_url_writes_what_pandas_wrote(tmp_path):
    path = _write(tmp_path, "csv", [("not a url", "x"), ("", "y")])
    counts = _assert_same_as_reference(UrlListParams(path=str(path), url_col="URL", caption_col="text",
                                                     keep_cols=["license"]), tmp_path, batch_rows=1)
    assert counts["urls"] == 0 and counts["rows"] == 2


def test_whitespace_is_what_str_strip_removes():
    assert WHITESPACE == "".join(c for c in map(chr, range(sys.maxunicode + 1)) if c.isspace())


def test_missing_column_names_the_key(tmp_path):
    path = _write(tmp_path, "csv")
    with pytest.raises(ParamsError, match=r"source.url_list: column\(s\) \['url'\] not in"):
        normalise(UrlListParams(path=str(path), caption_col=None), tmp_path / "urls.parquet")
    assert not (tmp_path / "urls.parquet").exists()


def test_an_unparseable_url_is_invalid_not_a_crash():
    assert not is_valid_url("http://[bad/x.jpg")  # urlparse raises ValueError on the unclosed bracket
    assert is_valid_url("http://[::1]/x.jpg")
