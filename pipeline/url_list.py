"""Normalise a user's URL list (csv, tsv, parquet, jsonl) into the source schema: url, uid, alt_text, extras.

Every input row ends in the output or in one named drop class; the counts add up to the rows read.
"""
import hashlib
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pandas as pd

from pipeline.params.source import UrlListParams
from pipeline.params import ParamsError

READERS = {
    "csv": lambda p: pd.read_csv(p, dtype=str, keep_default_na=False),
    "tsv": lambda p: pd.read_csv(p, sep="\t", dtype=str, keep_default_na=False),
    "parquet": pd.read_parquet,
    "jsonl": lambda p: pd.read_json(p, lines=True, dtype=False),
}
SCHEMES_WITH_HOST = {"http", "https"}


def detect_format(path: str, declared: str) -> str:
    if declared != "auto":
        return declared
    suffix = Path(path).suffix.lower().lstrip(".")
    fmt = {"csv": "csv", "tsv": "tsv", "parquet": "parquet", "jsonl": "jsonl", "json": "jsonl"}.get(suffix)
    if fmt is None:
        raise ParamsError(f"source.url_list.format: cannot tell the format of {path!r}; set it explicitly")
    return fmt


def is_valid_url(url: str) -> bool:
    if any(c.isspace() for c in url):
        return False
    parts = urlparse(url)
    if parts.scheme in SCHEMES_WITH_HOST:
        return bool(parts.netloc)
    return parts.scheme == "file" and bool(parts.path)


def url_uid(url: str) -> str:
    return hashlib.sha1(url.encode()).hexdigest()[:16]


def normalise(params: UrlListParams) -> tuple[pd.DataFrame, dict]:
    """Read, clean, dedupe and optionally subsample the list; returns (urls, counts)."""
    frame = READERS[detect_format(params.path, params.format)](params.path)
    wanted = [params.url_col] + ([params.caption_col] if params.caption_col else []) + list(params.keep_cols)
    missing = [c for c in wanted if c not in frame.columns]
    if missing:
        raise ParamsError(f"source.url_list: column(s) {missing} not in {params.path} (has {list(frame.columns)})")
    counts = {"rows": len(frame)}
    urls = frame[params.url_col].map(lambda v: "" if v is None or v is pd.NA or v != v else str(v).strip())

    empty = urls == ""
    invalid = ~empty & ~urls.map(is_valid_url)
    duplicate = ~empty & ~invalid & urls.duplicated(keep="first")
    keep = ~(empty | invalid | duplicate)
    counts.update(dropped_empty=int(empty.sum()), dropped_invalid=int(invalid.sum()),
                  dropped_duplicate=int(duplicate.sum()))

    out = pd.DataFrame({"url": urls[keep]})
    out["uid"] = out["url"].map(url_uid)
    captions = frame.loc[keep, params.caption_col] if params.caption_col else pd.Series("", index=out.index)
    out["alt_text"] = captions.map(lambda v: "" if v is None or v is pd.NA or v != v else str(v))
    for col in params.keep_cols:
        out[col] = frame.loc[keep, col]

    sampled_out = 0
    if params.max_samples is not None and len(out) > params.max_samples:
        chosen = np.random.default_rng(params.seed).choice(len(out), size=params.max_samples, replace=False)
        sampled_out = len(out) - params.max_samples
        out = out.iloc[np.sort(chosen)]
    counts["dropped_sampling"] = sampled_out
    counts["urls"] = len(out)
    return out.reset_index(drop=True), counts
