"""Long-text search over your own images: rank image files, folders of them or webdataset shards by how well each
image matches one description (``python -m fixclip search``; docs/export.md, "Search your own images").

Images stream through the model in batches and only the best ``top_k`` are kept, so a folder of any size fits in
memory. A shard's sample shows its long caption (``long.txt``) beside the score. A file or sample that does not
decode is counted and named, never skipped silently.
"""
import heapq
import html
import io
import itertools
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
import webdataset as wds
from PIL import Image
from tqdm import tqdm

from core.cli import UserError
from .eval.encode import eval_transform
from core.image_files import IMAGE_SUFFIXES, UNDECODABLE, png_data_url
from .model import FixClip

SHARD_SUFFIX = ".tar"
THUMBNAIL_SIDE = 192


@dataclass(frozen=True)
class Candidate:
    """One image to rank: where it is (a path, or ``shard.tar#key``), its encoded bytes and its caption, if any."""

    source: str
    data: bytes
    caption: str = ""


@dataclass(order=True)
class Hit:
    score: float
    candidate: Candidate = field(compare=False)


@dataclass
class Ranking:
    hits: list[Hit]
    ranked: int
    undecodable: list[str]


def inputs(paths: list[Path]) -> tuple[list[Path], list[Path]]:
    """(image files, shard files) of the given files and folders (folders searched recursively, in sorted order);
    a UserError when there is nothing to rank."""
    images, shards = [], []
    for path in paths:
        found = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        images += [p for p in found if p.suffix.lower() in IMAGE_SUFFIXES]
        shards += [p for p in found if p.suffix == SHARD_SUFFIX]
        if path.is_dir() and not any(p.suffix.lower() in IMAGE_SUFFIXES or p.suffix == SHARD_SUFFIX for p in found):
            raise UserError(f"--images {path}: no images ({', '.join(IMAGE_SUFFIXES)}) or webdataset shards "
                            f"({SHARD_SUFFIX}) in this folder")
    return images, shards


def candidates(images: list[Path], shards: list[Path]) -> Iterator[Candidate]:
    """Every image file, then every image of every shard (its first image member, as webdataset groups them)."""
    for path in images:
        yield Candidate(str(path), path.read_bytes())
    for shard in shards:
        try:
            for sample in wds.WebDataset(str(shard), shardshuffle=False):
                image = next((sample[k] for k in sample if f".{k.split('.')[-1]}" in IMAGE_SUFFIXES), None)
                if image is not None:
                    caption = sample.get("long.txt", sample.get("txt", b"")).decode("utf-8", "replace")
                    yield Candidate(f"{shard}#{sample['__key__']}", image, caption)
        except (OSError, ValueError, tarfile.TarError) as exc:
            reason = exc.args[0] if exc.args else type(exc).__name__
            raise UserError(f"--images: {shard}: not a readable webdataset shard ({reason})") from None


def _decoded(candidate: Candidate) -> Image.Image | None:
    try:
        with Image.open(io.BytesIO(candidate.data)) as image:
            return image.convert("RGB")
    except UNDECODABLE:
        return None


def rank(model: FixClip, query: str, found: Iterator[Candidate], top_k: int, batch_size: int = 64) -> Ranking:
    """The ``top_k`` candidates by cosine similarity to ``query`` (the model reads its first
    ``model.context_length`` tokens), best first."""
    device = next(model.parameters()).device
    transform = eval_transform(model)
    with torch.inference_mode(), tqdm(desc="search: images", unit="image", leave=False, disable=None) as progress:
        text = F.normalize(model.encode_text(model.tokenizer()([query]).to(device)).float(), dim=-1)[0]
        best: list[Hit] = []
        ranked, undecodable = 0, []
        while batch := list(itertools.islice(found, batch_size)):
            decoded = [(c, _decoded(c)) for c in batch]
            undecodable += [c.source for c, image in decoded if image is None]
            kept = [(c, image) for c, image in decoded if image is not None]
            progress.update(len(batch))
            if not kept:
                continue
            pixels = torch.stack([transform(image) for _, image in kept]).to(device)
            scores = F.normalize(model.encode_image(pixels).float(), dim=-1) @ text
            for (candidate, _), score in zip(kept, scores.tolist()):
                hit = Hit(score, candidate)
                (heapq.heappush if len(best) < top_k else heapq.heappushpop)(best, hit)
            ranked += len(kept)
    return Ranking(sorted(best, reverse=True), ranked, undecodable)


def page(query: str, model_name: str, ranking: Ranking) -> str:
    """The ranking as one self-contained HTML page (images inline; no script, nothing fetched)."""
    rows = []
    for place, hit in enumerate(ranking.hits, 1):
        caption = f"<p>{html.escape(hit.candidate.caption)}</p>" if hit.candidate.caption else ""
        rows.append(f'<li><img src="{png_data_url(hit.candidate.data, THUMBNAIL_SIDE)}" alt="result {place}"><div>'
                    f"<b>{hit.score:.4f}</b> <code>{html.escape(hit.candidate.source)}</code>{caption}</div></li>")
    return "\n".join([
        "<!DOCTYPE html>", '<html><head><meta charset="utf-8"><title>Search</title>',
        "<style>body{font-family:sans-serif;margin:2em;max-width:70em} li{display:flex;gap:1em;margin:0 0 1em} "
        "img{width:160px;image-rendering:pixelated;border:1px solid #ccc} blockquote{color:#333}</style>",
        "</head><body>", f"<h1>Search with <code>{html.escape(model_name)}</code></h1>",
        f"<blockquote>{html.escape(query)}</blockquote>",
        f"<p>{len(ranking.hits)} best of {ranking.ranked} images"
        + (f"; {len(ranking.undecodable)} could not be decoded" if ranking.undecodable else "") + "</p>",
        "<ol>", *rows, "</ol>", "</body></html>", ""])
