"""A user's URL list is normalised with every dropped row counted by reason."""
import json

import pandas as pd
import pytest

from pipeline.params.source import UrlListParams
from pipeline.params import ParamsError
from pipeline.url_list import normalise

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


def _write(tmp_path, fmt):
    frame = pd.DataFrame(ROWS, columns=["URL", "text"]).assign(license=[f"cc{i}" for i in range(len(ROWS))])
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


@pytest.mark.parametrize("fmt", ["csv", "tsv", "parquet", "jsonl"])
def test_normalise_counts_every_row(tmp_path, fmt):
    path = _write(tmp_path, fmt)
    urls, counts = normalise(UrlListParams(path=str(path), url_col="URL", caption_col="text", keep_cols=["license"]))
    assert list(urls["url"]) == ["https://example.org/a.jpg", "https://example.org/b.jpg", "file:///data/d.png",
                                 "https://example.org/e.jpg"]
    assert list(urls["alt_text"]) == ["a cat", "a dog", "local file", ""]
    assert list(urls["license"]) == ["cc0", "cc1", "cc7", "cc8"]
    assert urls["uid"].is_unique and urls["uid"].str.len().eq(16).all()
    assert counts == {"rows": 9, "dropped_empty": 1, "dropped_invalid": 3, "dropped_duplicate": 1,
                      "dropped_sampling": 0, "urls": 4}
    dropped = sum(v for k, v in counts.items() if k.startswith("dropped_"))
    assert dropped + counts["urls"] == counts["rows"]


def test_max_samples_is_seeded_and_keeps_order(tmp_path):
    path = tmp_path / "many.csv"
    pd.DataFrame({"url": [f"https://example.org/{i}.jpg" for i in range(100)]}).to_csv(path, index=False)
    params = UrlListParams(path=str(path), caption_col=None, max_samples=10, seed=3)
    first, counts = normalise(params)
    again, _ = normalise(params)
    other, _ = normalise(UrlListParams(path=str(path), caption_col=None, max_samples=10, seed=4))
    assert list(first["url"]) == list(again["url"]) != list(other["url"])
    numbers = [int(url.rsplit("/", 1)[1].removesuffix(".jpg")) for url in first["url"]]
    assert numbers == sorted(numbers)  # the list's own order survives sampling
    assert counts["dropped_sampling"] == 90 and counts["urls"] == 10


def test_missing_column_names_the_key(tmp_path):
    path = _write(tmp_path, "csv")
    with pytest.raises(ParamsError, match=r"source.url_list: column\(s\) \['url'\] not in"):
        normalise(UrlListParams(path=str(path), caption_col=None))
