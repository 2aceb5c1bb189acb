"""Normalise a user's URL list (csv, tsv, parquet, jsonl) into the source schema: url, uid, alt_text, extras.

Every input row ends in the output or in one named drop class; the counts add up to the rows read.

The list is streamed twice in record batches, so memory grows with the number of rows (docs/scale.md, "source")
and not with the length of the URLs and captions. Pass 1 classifies
every row (empty, invalid, valid) and hashes the valid URLs; dedup (first occurrence kept) and the seeded subsample
run on those hashes; pass 2 reads the list again and writes the kept rows in input order. The output (values,
dtypes, pandas metadata) is the one of reading the whole list with pandas, cleaning it and `to_parquet`.
"""
import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from tqdm import tqdm

from core.outputs import atomic_path
from pipeline.params import ParamsError
from pipeline.params.source import UrlListParams

BATCH_ROWS = 1 << 17
CSV_BLOCK_BYTES = 2 << 20  # also the longest csv row that can be read
DELIMITERS = {"csv": ",", "tsv": "\t"}
SCHEMES_WITH_HOST = {"http", "https"}
# Exactly the characters for which str.isspace() is true, i.e. those str.strip() removes (a test checks this).
WHITESPACE = ("\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007"
              "\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000")
# A fast path for is_valid_url: an http(s) URL of printable ASCII (so without whitespace) whose host part is not
# empty and holds none of the characters urlsplit treats specially there ('/?#' end it, brackets mean IPv6) is
# valid. Every other non-empty URL is checked by is_valid_url itself, so the result is the same.
SURELY_VALID_URL = (r"^[Hh][Tt][Tt][Pp][Ss]?://[\x21-\x22\x24-\x2e\x30-\x3e\x40-\x5a\x5c\x5e-\x7e]+"
                    r"([/?#][\x21-\x7e]*)?$")
HEX_DIGITS = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)


def detect_format(path: str, declared: str) -> str:
    """The declared format, or the one the file's suffix names."""
    if declared != "auto":
        return declared
    suffix = Path(path).suffix.lower().lstrip(".")
    fmt = {"csv": "csv", "tsv": "tsv", "parquet": "parquet", "jsonl": "jsonl", "json": "jsonl"}.get(suffix)
    if fmt is None:
        raise ParamsError(f"source.url_list.format: cannot tell the format of {path!r}; set it explicitly")
    return fmt


def is_valid_url(url: str) -> bool:
    """An http(s) URL with a host, or a file: URL with a path, and no whitespace."""
    if any(c.isspace() for c in url):
        return False
    try:
        parts = urlparse(url)
    except ValueError:  # e.g. an unclosed IPv6 bracket: http://[bad
        return False
    if parts.scheme in SCHEMES_WITH_HOST:
        return bool(parts.netloc)
    return parts.scheme == "file" and bool(parts.path)


@dataclass
class ColumnStats:
    """What pass 1 learns about a column, to give it the dtype a whole-file pandas read gave: whether it has nulls
    and, for an extra column (`learn_type`), the type of all its batches and a sample value."""

    learn_type: bool
    type: pa.DataType = field(default_factory=pa.null)
    has_nulls: bool = False
    sample: pa.Array | None = None

    def update(self, values: pa.Array) -> None:
        self.has_nulls |= values.null_count > 0
        if not self.learn_type or values.null_count == len(values):
            return
        if values.type != self.type:
            both = [pa.schema([("v", self.type)]), pa.schema([("v", values.type)])]
            self.type = pa.unify_schemas(both, promote_options="permissive").field("v").type
        if self.sample is None:
            self.sample = values.drop_null().take([0])  # a copy: a slice would hold on to the batch


@dataclass(frozen=True)
class Listing:
    """The list file, its format and its columns."""

    path: str
    fmt: str
    names: list[str]


@dataclass
class Scan:
    """Pass 1's result: counts, which rows hold a valid URL, the hashes of those URLs in row order, and what the
    other columns hold (with the list's schema metadata, where pandas keeps the dtypes of a parquet it wrote)."""

    rows: int = 0
    empty: int = 0
    invalid: int = 0
    valid: list[np.ndarray] = field(default_factory=lambda: [np.zeros(0, dtype=bool)])
    hash_high: list[np.ndarray] = field(default_factory=lambda: [np.zeros(0, dtype=np.uint64)])
    hash_low: list[np.ndarray] = field(default_factory=lambda: [np.zeros(0, dtype=np.uint64)])
    columns: dict[str, ColumnStats] = field(default_factory=dict)
    metadata: dict | None = None


def normalise(params: UrlListParams, out_path: Path, batch_rows: int = BATCH_ROWS) -> dict:
    """Read, clean, dedupe and optionally subsample the list into `out_path` (parquet, written atomically, row groups
    of about `batch_rows` rows); returns the counts."""
    fmt = detect_format(params.path, params.format)
    listing = Listing(params.path, fmt, _column_names(params.path, fmt))
    columns = _read_columns(params)
    _check_columns(params, listing.names, columns)
    text_columns = [params.url_col] + ([params.caption_col] if params.caption_col else [])

    def batches(desc: str, total: int | None) -> Iterator[pa.RecordBatch]:
        return _progress(_batches(listing, columns, text_columns, batch_rows), desc, total)

    scan = _scan(batches("source: scan", _known_rows(listing)), params)
    keep, uid_high, counts = _select(scan, params)
    schema = _output_schema(params, scan, counts["urls"])
    kept = _kept_rows(batches("source: write", scan.rows), keep, uid_high, params, scan.columns, schema)
    with atomic_path(out_path) as tmp, pq.ParquetWriter(tmp, schema) as writer:
        for group in _row_groups(kept, batch_rows):
            writer.write_table(group)
    return counts


def _read_columns(params: UrlListParams) -> list[str]:
    """The input columns the output needs, each once."""
    wanted = [params.url_col] + ([params.caption_col] if params.caption_col else []) + list(params.keep_cols)
    return list(dict.fromkeys(wanted))


def _check_columns(params: UrlListParams, names: list[str], columns: list[str]) -> None:
    missing = [c for c in columns if c not in names]
    if missing:
        raise ParamsError(f"source.url_list: column(s) {missing} not in {params.path} (has {names})")


def _column_names(path: str, fmt: str) -> list[str]:
    """The list's columns (for jsonl: those of its first batch of lines)."""
    if fmt in DELIMITERS:
        return _csv_header(path, DELIMITERS[fmt])
    if fmt == "parquet":
        schema = pq.read_schema(path)
        index = {c for c in (schema.pandas_metadata or {}).get("index_columns", []) if isinstance(c, str)}
        return [name for name in schema.names if name not in index]  # pandas read a stored index as the index
    return list(pd.read_json(path, lines=True, dtype=False, nrows=BATCH_ROWS).columns)


def _known_rows(listing: Listing) -> int | None:
    """The row count, if the file states it without being read."""
    return pq.ParquetFile(listing.path).metadata.num_rows if listing.fmt == "parquet" else None


def _batches(listing: Listing, columns: list[str], text_columns: list[str],
             batch_rows: int) -> Iterator[pa.RecordBatch]:
    """The list's `columns` in record batches of at most `batch_rows` rows, read as pandas read them: csv/tsv all
    strings with no NA conversion, parquet with its own types, jsonl through pandas' json reader."""
    if listing.fmt in DELIMITERS:
        yield from _csv_batches(listing, columns, batch_rows)
    elif listing.fmt == "parquet":
        with pq.ParquetFile(listing.path) as parquet:
            yield from parquet.iter_batches(batch_size=batch_rows, columns=columns)
    else:
        yield from _jsonl_batches(listing.path, columns, text_columns, batch_rows)


def _csv_blank(delimiter: str) -> str:
    """The characters that make a line blank for pandas when it holds nothing else."""
    return " \t".replace(delimiter, "")


def _csv_parse_options(delimiter: str) -> pacsv.ParseOptions:
    """pandas' dialect: newlines allowed in quoted values, lines of only spaces and tabs skipped as blank (arrow
    sees them as rows with too few fields); any other row with a wrong field count is an error."""
    def skip_blank_line(row: pacsv.InvalidRow) -> str:
        return "skip" if not row.text.strip(_csv_blank(delimiter)) else "error"

    return pacsv.ParseOptions(delimiter=delimiter, newlines_in_values=True, invalid_row_handler=skip_blank_line)


def _csv_header(path: str, delimiter: str) -> list[str]:
    read = pacsv.ReadOptions(block_size=CSV_BLOCK_BYTES)
    with pacsv.open_csv(path, read_options=read, parse_options=_csv_parse_options(delimiter)) as reader:
        return reader.schema.names


def _csv_batches(listing: Listing, columns: list[str], batch_rows: int) -> Iterator[pa.RecordBatch]:
    delimiter = DELIMITERS[listing.fmt]
    convert = pacsv.ConvertOptions(column_types=dict.fromkeys(columns, pa.string()), include_columns=columns,
                                   strings_can_be_null=False)
    read = pacsv.ReadOptions(block_size=CSV_BLOCK_BYTES)
    with pacsv.open_csv(listing.path, read_options=read, parse_options=_csv_parse_options(delimiter),
                        convert_options=convert) as reader:
        for block in reader:
            if len(listing.names) == 1:
                block = _drop_blank_lines(block, delimiter)
            for start in range(0, block.num_rows, batch_rows):
                yield block.slice(start, batch_rows)


def _drop_blank_lines(block: pa.RecordBatch, delimiter: str) -> pa.RecordBatch:
    """In a one-column list a line of only spaces and tabs is a row to arrow, a blank line pandas skipped. (So is
    such a value in quotes, which pandas kept and counted as empty: rarer, and dropped either way.)"""
    blank = pc.match_substring_regex(block.column(0), f"^[{_csv_blank(delimiter)}]+$")
    return block.filter(pc.invert(blank))


def _jsonl_batches(path: str, columns: list[str], text_columns: list[str],
                   batch_rows: int) -> Iterator[pa.RecordBatch]:
    """Chunks of pandas.read_json; text columns of mixed types (a number among strings) are printed first."""
    with pd.read_json(path, lines=True, dtype=False, chunksize=batch_rows) as chunks:
        for chunk in chunks:
            chunk = chunk.reindex(columns=columns)
            for name in text_columns:
                if chunk[name].dtype == object and pd.api.types.infer_dtype(chunk[name]) != "string":
                    chunk[name] = chunk[name].map(_cell_text)
            yield pa.RecordBatch.from_pandas(chunk, preserve_index=False)


def _progress(batches: Iterable[pa.RecordBatch], desc: str, total: int | None) -> Iterator[pa.RecordBatch]:
    with tqdm(total=total, desc=desc, unit="row", unit_scale=True) as bar:
        for batch in batches:
            yield batch
            bar.update(batch.num_rows)


def _with_offsets(batches: Iterable[pa.RecordBatch]) -> Iterator[tuple[int, pa.RecordBatch]]:
    """Each batch with the list's row number of its first row."""
    offset = 0
    for batch in batches:
        yield offset, batch
        offset += batch.num_rows


def _scan(batches: Iterable[pa.RecordBatch], params: UrlListParams) -> Scan:
    """Pass 1: count empty and invalid URLs, hash the valid ones, learn the other columns' types."""
    scan = Scan(columns={name: ColumnStats(learn_type=name in params.keep_cols) for name in _read_columns(params)})
    for batch in batches:
        urls = _url_text(batch, params.url_col)
        empty, valid = _classify(urls)
        high, low = _sha1_prefix(urls.filter(valid))
        scan.rows += batch.num_rows
        scan.metadata = batch.schema.metadata
        scan.empty += int(empty.sum())
        scan.invalid += int((~empty & ~valid).sum())
        scan.valid.append(valid)
        scan.hash_high.append(high)
        scan.hash_low.append(low)
        for name, stats in scan.columns.items():
            stats.update(batch.column(name))
    return scan


def _classify(urls: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(empty, valid) masks of stripped URLs; is_valid_url decides every URL the fast pattern does not vouch for."""
    empty = pc.equal(urls, "").to_numpy(zero_copy_only=False)
    valid = pc.match_substring_regex(urls, SURELY_VALID_URL).to_numpy(zero_copy_only=False, writable=True)
    unsure = np.flatnonzero(~empty & ~valid)
    valid[unsure] = [is_valid_url(url) for url in urls.take(unsure).to_pylist()]
    return empty, valid


def _sha1_prefix(urls: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """The first 128 bits of sha1(url) as two uint64 per URL, big-endian: the first one's hex is the uid.

    Dedup compares these instead of the URLs. Two different URLs share them with a probability of about
    rows^2 / 2^129 (1e-24 for 30M rows), far below that of a hardware fault, so collisions are no concern."""
    digests = b"".join([hashlib.sha1(url.encode()).digest()[:16] for url in urls.to_pylist()])
    pairs = np.frombuffer(digests, dtype=">u8").reshape(-1, 2).astype(np.uint64)
    return pairs[:, 0].copy(), pairs[:, 1].copy()


def _select(scan: Scan, params: UrlListParams) -> tuple[np.ndarray, np.ndarray, dict]:
    """Which rows are kept after dedup and the seeded subsample (a mask over all rows), the kept rows' uid hashes
    in row order, and the counts. Takes the per-row arrays out of `scan`, so that their memory is freed."""
    high, low, valid = _take_all(scan.hash_high), _take_all(scan.hash_low), _take_all(scan.valid)
    first = _first_occurrences(high, low)
    rows, uid_high = np.flatnonzero(valid)[first], high[first]
    chosen = _subsample(len(rows), params)
    if chosen is not None:
        rows, uid_high = rows[chosen], uid_high[chosen]
    keep = np.zeros(scan.rows, dtype=bool)
    keep[rows] = True
    counts = {"rows": scan.rows, "dropped_empty": scan.empty, "dropped_invalid": scan.invalid,
              "dropped_duplicate": len(first) - int(first.sum()),
              "dropped_sampling": 0 if chosen is None else int(first.sum()) - len(chosen), "urls": len(rows)}
    return keep, uid_high, counts


def _take_all(parts: list[np.ndarray]) -> np.ndarray:
    """The pieces concatenated; `parts` is emptied."""
    whole = np.concatenate(parts)
    parts.clear()
    return whole


def _first_occurrences(high: np.ndarray, low: np.ndarray) -> np.ndarray:
    """Mask of the entries whose (high, low) hash no earlier entry has."""
    order = np.argsort(high, kind="stable")  # equal hashes keep their input order: a run starts with the first
    repeat = _same_as_previous(high[order])
    if (repeat & ~_same_as_previous(low[order])).any():
        # Two URLs share the first 64 bits (odds ~1e-5 at 30M rows), so a run of equal `high` may mix different
        # `low`: order by both halves instead (slower).
        order = np.lexsort((low, high))
        repeat = _same_as_previous(high[order]) & _same_as_previous(low[order])
    first = np.ones(len(order), dtype=bool)
    first[order[repeat]] = False
    return first


def _same_as_previous(values: np.ndarray) -> np.ndarray:
    same = np.zeros(len(values), dtype=bool)
    same[1:] = values[1:] == values[:-1]
    return same


def _subsample(kept: int, params: UrlListParams) -> np.ndarray | None:
    """Sorted positions of the seeded `max_samples` draw among the kept URLs, or None when all are kept."""
    if params.max_samples is None or kept <= params.max_samples:
        return None
    return np.sort(np.random.default_rng(params.seed).choice(kept, size=params.max_samples, replace=False))


def _kept_rows(batches: Iterable[pa.RecordBatch], keep: np.ndarray, uid_high: np.ndarray, params: UrlListParams,
               columns: dict[str, ColumnStats], schema: pa.Schema) -> Iterator[pa.RecordBatch]:
    """Pass 2: the output columns of the kept rows, batch by batch."""
    written = 0
    for offset, batch in _with_offsets(batches):
        picked = batch.filter(keep[offset:offset + batch.num_rows])
        if picked.num_rows:
            uids = uid_high[written:written + picked.num_rows]
            yield _output_batch(picked, uids, params, columns, schema)
            written += picked.num_rows


def _row_groups(batches: Iterable[pa.RecordBatch], rows: int) -> Iterator[pa.Table]:
    """The batches gathered into tables of at least `rows` rows (the last one may be smaller): one row group each,
    however small the reader's batches are."""
    gathered, count = [], 0
    for batch in batches:
        gathered.append(batch)
        count += batch.num_rows
        if count >= rows:
            yield pa.Table.from_batches(gathered)
            gathered, count = [], 0
    if gathered:
        yield pa.Table.from_batches(gathered)


def _output_schema(params: UrlListParams, scan: Scan, rows: int) -> pa.Schema:
    """The schema, with pandas metadata, that `to_parquet` gives the output frame: built from a two-row frame of
    the same dtypes, or an empty one when no row is kept (pandas then writes object columns as null-typed)."""
    frame = pd.DataFrame({"url": ["", ""]})
    frame["uid"] = ["", ""]
    frame["alt_text"] = ["", ""]
    for name in params.keep_cols:
        frame[name] = _column_pandas(_probe(scan, name), name, scan.columns[name].has_nulls)
    return pa.Schema.from_pandas(frame if rows else frame.iloc[:0], preserve_index=False)


def _probe(scan: Scan, name: str) -> pa.RecordBatch:
    """Two values of the column's type: a sample, then a null if the column has one."""
    stats = scan.columns[name]
    sample = pa.nulls(1, stats.type) if stats.sample is None else stats.sample.cast(stats.type)
    values = pa.concat_arrays([sample, pa.nulls(1, stats.type) if stats.has_nulls else sample])
    return pa.RecordBatch.from_arrays([values], names=[name], metadata=scan.metadata)


def _output_batch(batch: pa.RecordBatch, uid_high: np.ndarray, params: UrlListParams,
                  columns: dict[str, ColumnStats], schema: pa.Schema) -> pa.RecordBatch:
    """The output columns of the kept rows in `batch`; extra columns named like an output column replace it."""
    values = {"url": _url_text(batch, params.url_col), "uid": _hex(uid_high),
              "alt_text": (_text(batch, params.caption_col, columns[params.caption_col].has_nulls)
                           if params.caption_col else pa.repeat("", batch.num_rows))}
    for name in params.keep_cols:
        values[name] = _extra(batch, name, schema.field(name).type, columns[name].has_nulls)
    return pa.RecordBatch.from_arrays([values[name] for name in schema.names], schema=schema)


def _hex(high: np.ndarray) -> pa.Array:
    """16 lowercase hex digits per uint64, most significant first."""
    octets = high.astype(">u8").view(np.uint8).reshape(-1, 8)
    digits = HEX_DIGITS[np.stack([octets >> 4, octets & 15], axis=-1)].reshape(-1)
    offsets = np.arange(0, 16 * (len(high) + 1), 16, dtype=np.int32)
    return pa.StringArray.from_buffers(len(high), pa.py_buffer(offsets), pa.py_buffer(digits))


def _url_text(batch: pa.RecordBatch, name: str) -> pa.Array:
    """The URL column as stripped strings. (A URL column of another type never holds a valid URL, so how pandas
    printed its values matters only for telling empty from invalid, which the nulls decide.)"""
    return pc.utf8_trim(_text(batch, name, column_has_nulls=False), WHITESPACE)


def _text(batch: pa.RecordBatch, name: str, column_has_nulls: bool) -> pa.Array:
    """A column as strings, each pandas value printed: missing -> "", else str(value)."""
    values = batch.column(name)
    if _is_text(values.type):
        return pc.fill_null(values.cast(pa.string()), "")
    printed = [_cell_text(value) for value in _column_pandas(batch, name, column_has_nulls)]
    return pa.array(printed, type=pa.string())


def _extra(batch: pa.RecordBatch, name: str, out_type: pa.DataType, column_has_nulls: bool) -> pa.Array:
    """An extra column as `to_parquet` wrote its pandas values (NaN -> null, say)."""
    values = batch.column(name)
    if _is_text(values.type) and out_type == pa.string():
        return values.cast(pa.string())
    return pa.Array.from_pandas(_column_pandas(batch, name, column_has_nulls), type=out_type)


def _column_pandas(batch: pa.RecordBatch, name: str, column_has_nulls: bool) -> pd.Series:
    """A column as a whole-file pandas read gave it: the schema's pandas metadata restores extension dtypes
    (Int64, string, ...), and a numpy int column with a null anywhere in the file was read as float."""
    series = batch.select([name]).to_pandas()[name]
    if column_has_nulls and isinstance(series.dtype, np.dtype) and series.dtype.kind in "iu":
        return series.astype(np.float64)
    return series


def _is_text(data_type: pa.DataType) -> bool:
    if pa.types.is_dictionary(data_type):
        return _is_text(data_type.value_type)
    return pa.types.is_string(data_type) or pa.types.is_large_string(data_type) or pa.types.is_string_view(data_type)


def _cell_text(value) -> str:
    return "" if value is None or value is pd.NA or value != value else str(value)
