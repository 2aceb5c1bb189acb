"""What each stage made, on one page that opens from disk (`make gallery`, also run at the end of `make repro`).

    python -m pipeline.gallery [--out gallery/index.html] [--per-group 24] [--seed 0]

Built from a run's outputs (URL list, downloads, captions, shards, caption metrics: where dvc.yaml's `paths` puts
them, pipeline/paths.py): every URL's and image's fate with counts that must add up, a seeded sample of each split
as training reads it (image, long caption, short text, shard), on the toy world each caption's errors against its scene and the caption stage's
per-attribute accuracy, every dropped image by reason (at most --per-group of each, sampled) and each benchmark copy
beside the benchmark image it matched. Images are inline thumbnails: the page fetches nothing and has no script.
docs/pipeline.md, "Reading a run".
"""
import html
import json
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

from core.cli import ArgumentParser, UserError, user_errors
from core.image_files import UNDECODABLE, png_data_url
from pipeline.paths import pipeline_paths
from pipeline.toyworld.captions import ATTRIBUTES, cell_name, judge_caption

DEFAULT_OUT = Path("gallery/index.html")
SPLITS = ("train", "val")
THUMBNAIL_SIDE = 128
STYLE = ("body{font-family:sans-serif;margin:2em;max-width:80em} table{border-collapse:collapse} "
         "td,th{border:1px solid #ccc;padding:.2em .6em;text-align:left;vertical-align:top} "
         "img{width:128px;height:auto;flex:none;align-self:flex-start;image-rendering:pixelated;border:1px solid #ccc} "
         ".bad{color:#b00} .ok{color:#070} "
         ".cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(26em,1fr));gap:1em} "
         ".card{display:flex;gap:.8em;border:1px solid #ddd;padding:.5em;font-size:.85em} .card p{margin:.2em 0}")


def _read_parquets(folder: Path) -> pd.DataFrame:
    files = sorted(folder.glob("[0-9]*.parquet"))
    return pd.concat([pd.read_parquet(f) for f in files], ignore_index=True) if files else pd.DataFrame()


def _needed(path: Path) -> Path:
    if not path.exists():
        raise UserError(f"{path}: not found; the gallery shows a run's outputs: run `dvc repro` (or `dvc pull`) first")
    return path


def thumbnail(data: bytes | None) -> str:
    """An <img> of the image bytes (a PNG data URL), or a note where there are none or they do not decode."""
    if data is None:
        return "<p class=bad>(no image)</p>"
    try:
        return f'<img alt="" src="{png_data_url(data, THUMBNAIL_SIDE)}">'
    except UNDECODABLE:
        return "<p class=bad>(does not decode)</p>"


class TarReader:
    """Members of tar files, each file opened once."""

    def __init__(self):
        self._open: dict[Path, tarfile.TarFile] = {}

    def read(self, path: Path, member: str) -> bytes | None:
        if path not in self._open:
            self._open[path] = tarfile.open(path)
        try:
            return self._open[path].extractfile(member).read()
        except (KeyError, AttributeError):
            return None

    def close(self) -> None:
        for handle in self._open.values():
            handle.close()


def caption_errors(caption: str, scene) -> list[str]:
    """What a caption gets wrong about its toy-world scene, one phrase per error (empty: all right)."""
    verdict = judge_caption(caption, scene)
    errors = []
    if not verdict.count_ok:
        errors.append(f"count: says {verdict.parsed.count}, is {len(verdict.truth['objects'])}")
    if not verdict.background_ok:
        errors.append(f"background: says {verdict.parsed.background}, is {verdict.truth['background']}")
    for found in verdict.objects:
        cell = cell_name(found.truth["row"], found.truth["col"], verdict.truth.get("grid", 3))
        if found.found is None:
            errors.append(f"{cell}: the {found.truth['colour']} {found.truth['shape']} is not placed")
            continue
        errors += [f"{cell}: {name} says {getattr(found.found, name)}, is {found.truth[key]}"
                   for name, key in ATTRIBUTES.items() if not found.checks[name]]
    extra = len(verdict.parsed.objects) - verdict.placed
    if extra:
        errors.append(f"{extra} object(s) named where the scene has none, or twice")
    return errors


def _sample(frame: pd.DataFrame, size: int, seed: int) -> pd.DataFrame:
    if len(frame) <= size:
        return frame
    chosen = np.sort(np.random.default_rng(seed).choice(len(frame), size, replace=False))
    return frame.iloc[chosen]


def _row(cells: tuple, tag: str = "td") -> str:
    return "<tr>" + "".join(f"<{tag}>{c}</{tag}>" for c in cells) + "</tr>"


def _table(rows: list[tuple], head: tuple) -> str:
    return f"<table>{_row(head, 'th')}{''.join(map(_row, rows))}</table>"


def fates_section(urls: int, raw: pd.DataFrame, index: pd.DataFrame) -> tuple[str, dict]:
    """Every URL's fate: download status, then each downloaded image's fate in the shard stage; the counts."""
    downloads = Counter(raw["status"]) if len(raw) else Counter()
    fates = Counter(index["fate"]) if len(index) else Counter()
    counts = {"download: no record": urls - len(raw),
              **{f"download: {k}": v for k, v in sorted(downloads.items()) if k != "success"},
              **{f"shard: {k}": v for k, v in sorted(fates.items())}}
    images_unaccounted = downloads.get("success", 0) - sum(fates.values())
    total = sum(counts.values())
    adds_up = total == urls and images_unaccounted == 0
    rows = [(html.escape(k), v) for k, v in counts.items() if v] + [("<b>total</b>", f"<b>{total}</b>")]
    verdict = (f"<p class=ok>Every one of the {urls} URLs has one fate.</p>" if adds_up else
               f"<p class=bad>The counts do not add up: {total} fates for {urls} URLs; {images_unaccounted} "
               f"downloaded images without a shard fate.</p>")
    return ("<h2>Fates</h2>" + verdict + _table(rows, ("fate", "URLs")),
            {"urls": urls, **counts, "adds_up": adds_up})


def quality_section(root: Path, metrics: str) -> str:
    """The caption stage's accuracy per attribute, from its metrics file ``metrics`` of the run in ``root``."""
    path = root / metrics
    quality = json.loads(path.read_text()).get("quality") if path.is_file() else None
    if not quality:
        return ""
    rows = [(k, f"{v:.3f}") for k, v in quality.items() if k != "captions"]
    return ("<h2>Caption accuracy against the toy world's scenes</h2>"
            f"<p>{quality['captions']} captions ({html.escape(metrics)}; docs/pipeline.md, \"Captioning with an "
            "MLLM\").</p>" + _table(rows, ("attribute", "share right")))


def _card(image: str, lines: list[str]) -> str:
    return f'<div class=card>{image}<div>{"".join(lines)}</div></div>'


def split_section(split: str, index: pd.DataFrame, shards: Path, tars: TarReader, size: int, seed: int) -> str:
    rows = index[index["fate"] == split]
    picked = _sample(rows, size, seed)
    cards = []
    for row in picked.itertuples():
        shard = shards / str(row.shard)
        meta = json.loads(tars.read(shard, f"{row.uid}.json") or b"{}")
        long = (tars.read(shard, f"{row.uid}.long.txt") or b"").decode()
        short = (tars.read(shard, f"{row.uid}.short.txt") or b"").decode()
        lines = [f"<p><b>{html.escape(row.uid)}</b> · <code>{html.escape(str(row.shard))}</code></p>",
                 f"<p>{html.escape(long)}</p>", f"<p><i>short:</i> {html.escape(short)}</p>"]
        if "scene" in meta:
            errors = caption_errors(long, meta["scene"])
            lines.append("<p class=ok>caption right in every attribute</p>" if not errors else
                         "".join(f"<p class=bad>✗ {html.escape(e)}</p>" for e in errors))
        cards.append(_card(thumbnail(tars.read(shard, f"{row.uid}.jpg")), lines))
    return (f"<h2>{split}: {len(picked)} of {len(rows)} samples</h2>"
            f"<p>Seeded sample (seed {seed}) as training reads it: the shard's image, long caption and short text.</p>"
            f"<div class=cards>{''.join(cards)}</div>")


def dropped_section(index: pd.DataFrame, captions: pd.DataFrame, raw: Path, tars: TarReader, size: int,
                    seed: int) -> str:
    dropped = index[~index["fate"].isin(SPLITS)]
    first_caption = (captions.sort_values("caption_index").drop_duplicates("key").set_index("key")["caption"]
                     if len(captions) else pd.Series(dtype=object))
    parts = [f"<h2>Dropped: {len(dropped)} images</h2>"]
    for reason, rows in sorted(dropped.groupby("fate"), key=lambda item: item[0]):
        picked = _sample(rows, size, seed)
        cards = []
        for row in picked.itertuples():
            image = thumbnail(tars.read(raw / f"{row.raw_shard}.tar", f"{row.key}.jpg"))
            lines = [f"<p><b>{html.escape(str(row.uid))}</b> · raw shard {html.escape(str(row.raw_shard))}</p>",
                     f"<p>{html.escape(str(first_caption.get(row.key, '(no caption)')))}</p>"]
            if reason == "benchmark_duplicate" and isinstance(row.benchmark_item, str):
                item = Path(row.benchmark_item)
                matched = thumbnail(item.read_bytes() if item.is_file() else None)
                lines = [f"<p>copies <code>{html.escape(row.benchmark_item)}</code> of "
                         f"{html.escape(str(row.benchmark))} (distance {row.benchmark_distance:.4f})</p>",
                         matched, *lines]
            cards.append(_card(image, lines))
        parts.append(f"<h3>{html.escape(reason)}: {len(picked)} of {len(rows)}</h3>"
                     f"<div class=cards>{''.join(cards)}</div>")
    return "".join(parts)


def failures_section(raw: pd.DataFrame, size: int, seed: int) -> str:
    failed = raw[raw["status"] != "success"] if len(raw) else raw
    if not len(failed):
        return "<h2>Download failures: none</h2>"
    picked = _sample(failed, size, seed)
    rows = [(html.escape(str(r.url)), html.escape(str(r.status)), html.escape(str(r.error_message)))
            for r in picked.itertuples()]
    return (f"<h2>Download failures: {len(picked)} of {len(failed)}</h2>"
            + _table(rows, ("url", "status", "error")))


def build(root: Path, size: int, seed: int) -> tuple[str, dict]:
    """The page of the run in ``root`` and its fate counts."""
    paths = pipeline_paths()
    raw_dir, shards = root / paths["raw"], root / paths["shards"]
    urls = len(pd.read_parquet(_needed(root / paths["urls"]), columns=["url"]))
    raw = _read_parquets(_needed(raw_dir))
    index = pd.read_parquet(_needed(shards / "index.parquet"))
    captions = _read_parquets(_needed(root / paths["captions"]))
    tars = TarReader()
    try:
        fates, counts = fates_section(urls, raw, index)
        body = [fates, quality_section(root, paths["metrics"]["caption"]),
                *(split_section(s, index, shards, tars, size, seed) for s in SPLITS),
                dropped_section(index, captions, raw_dir, tars, size, seed), failures_section(raw, size, seed)]
    finally:
        tars.close()
    page = "\n".join(["<!DOCTYPE html>", '<html><head><meta charset="utf-8"><title>Gallery</title>',
                      f"<style>{STYLE}</style></head><body>", "<h1>What each stage made</h1>", *body,
                      "</body></html>", ""])
    return page, counts


def main(argv: list[str] | None = None) -> None:
    with user_errors():
        parser = ArgumentParser(prog="python -m pipeline.gallery", description=__doc__.splitlines()[0])
        parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"the page to write ({DEFAULT_OUT})")
        parser.add_argument("--per-group", type=int, default=24, help="images shown per split and drop reason (24)")
        parser.add_argument("--seed", type=int, default=0, help="the sample's seed (0)")
        args = parser.parse_args(argv)
        if args.per_group < 1:
            parser.error("--per-group: at least 1")
        page, counts = build(Path("."), args.per_group, args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(page, encoding="utf-8")
    print(f"gallery: {counts['urls']} URLs, every one accounted for: {counts['adds_up']} -> {args.out}")


if __name__ == "__main__":
    main()
