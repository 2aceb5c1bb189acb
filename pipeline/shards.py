"""The shard stage's library: join raw images with their captions into deterministic webdataset shards.

Every successfully downloaded image ends in `train`, `val`, or one named drop class, recorded in an index; the
counts add up. Bytes are reproducible: samples are ordered by a seeded hash of their uid, tar members carry
mtime 0, uid/gid 0 and empty owner names, and image bytes are copied as downloaded.
"""
import hashlib
import io
import json
import tarfile
import warnings
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

import pandas as pd
from PIL import Image
from tqdm import tqdm

from pipeline.outputs import atomic_path, write_parquet
from pipeline.short_text import first_sentence
from pipeline.params.shard import ShardParams

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
DROP_REASONS = ("no_caption", "filtered_caption", "undecodable_image")
# Decompression-bomb guard while checking images (pixels), as Pillow's own default.
MAX_IMAGE_PIXELS = 89_478_485


class ShardInputError(RuntimeError):
    """An input tar is corrupt or holds a member that would escape its folder."""


def safe_member_name(tar_path: Path, name: str) -> str:
    """Refuse absolute paths, parent references and sub-folders (img2dataset writes flat tars)."""
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts or len(path.parts) != 1:
        raise ShardInputError(f"{tar_path}: member {name!r} would escape its folder; refusing this tar")
    return name


def read_images(tar_path: Path) -> dict[str, bytes]:
    """key -> image bytes of one raw shard; names the file if it is corrupt or unsafe."""
    images = {}
    try:
        with tarfile.open(tar_path) as archive:
            for member in archive:
                name = safe_member_name(tar_path, member.name)
                if not member.isfile():
                    raise ShardInputError(f"{tar_path}: member {name!r} is not a regular file; refusing this tar")
                key, _, ext = name.rpartition(".")
                if ext.lower() in IMAGE_EXTENSIONS:
                    images[key] = archive.extractfile(member).read()
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise ShardInputError(f"{tar_path}: corrupt tar ({exc})") from exc
    return images


def decodable(data: bytes) -> bool:
    """The image opens and decodes fully within the pixel budget."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                if image.width * image.height > MAX_IMAGE_PIXELS:
                    return False
                image.load()
        return True
    except Exception:  # noqa: BLE001 - any decoder failure is the same drop class
        return False


def unit_hash(seed: int, purpose: str, uid: str) -> float:
    """A deterministic number in [0, 1) per (seed, purpose, uid): independent of order and count."""
    digest = hashlib.sha256(f"{seed}:{purpose}:{uid}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def short_text(params: ShardParams, uid: str, long_caption: str, alt: str) -> tuple[str, str]:
    """(short text, its rule) from shard.short_text; alt text falls back to the first sentence when empty."""
    rule = params.short_text
    if rule == "both":
        rule = "alt_text" if unit_hash(params.seed, "short", uid) < params.alt_text_rate else "first_sentence"
    if rule == "alt_text" and alt.strip():
        return alt.strip(), "alt_text"
    return first_sentence(long_caption), "first_sentence"


def ground_truth(row: dict) -> str:
    """The source's own long description of an image (the toy world's ground truth), for `long_text: ground_truth`."""
    text = row.get("long_description")
    if not isinstance(text, str) or not text.strip():
        raise ShardInputError(f"shard.long_text: ground_truth needs the source's long descriptions (the toy world "
                              f"has them); image {row['key']} has none")
    return text


def load_raw_records(raw_dir: Path) -> pd.DataFrame:
    """img2dataset's per-shard records of successful downloads, with their shard file."""
    frames = []
    for parquet in sorted(raw_dir.glob("*.parquet")):
        frame = pd.read_parquet(parquet)
        frames.append(frame[frame["status"] == "success"].assign(raw_shard=parquet.stem))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["key", "raw_shard"])


def load_captions(captions_dir: Path) -> dict[str, dict]:
    """key -> caption row, from every captions parquet."""
    captions = {}
    for parquet in sorted(captions_dir.glob("*.parquet")):
        for row in pd.read_parquet(parquet).to_dict("records"):
            if row["key"] in captions:
                raise ShardInputError(f"{parquet}: key {row['key']!r} is captioned more than once")
            captions[row["key"]] = row
    return captions


def _present(value) -> bool:
    return value is not None and not (isinstance(value, float) and value != value)


def sample_json(row: dict, caption: dict, rule: str) -> dict:
    meta = {
        "key": row["key"], "uid": row.get("uid", row["key"]), "url": row.get("url"),
        "alt_text": row.get("caption") or "", "caption_model": caption.get("model"),
        "prompt_id": int(caption["prompt_id"]) if _present(caption.get("prompt_id")) else None,
        "short_text_rule": rule,
        "original_size": [int(row["original_width"]), int(row["original_height"])]
        if _present(row.get("original_width")) else None,
    }
    if isinstance(row.get("long_description"), str):
        meta["long_description"] = row["long_description"]
    if isinstance(row.get("scene"), str):
        meta["scene"] = json.loads(row["scene"])
    return meta


def plan(raw_dir: Path, captions_dir: Path, params: ShardParams) -> tuple[pd.DataFrame, dict[str, bytes], int]:
    """Decide every raw image's fate; returns the index (one row per image), the kept images' bytes and the number
    of caption rows read."""
    records = load_raw_records(raw_dir)
    captions = load_captions(captions_dir)
    images: dict[str, bytes] = {}
    for tar in tqdm(sorted(raw_dir.glob("*.tar")), desc="shard: read raw", unit="tar"):
        found = read_images(tar)
        listed = set(records.loc[records["raw_shard"] == tar.stem, "key"])
        if not listed <= found.keys():
            raise ShardInputError(f"{tar}: corrupt tar ({len(listed - found.keys())} images listed in "
                                  f"{tar.stem}.parquet are missing)")
        images.update(found)
    rows, kept = [], {}
    for row in tqdm(records.to_dict("records"), desc="shard: join", unit="img"):
        key, uid = row["key"], str(row.get("uid", row["key"]))
        entry = {"key": key, "uid": uid, "raw_shard": row["raw_shard"]}
        caption = captions.get(key)
        data = images[key]
        if caption is None:
            entry["fate"] = "no_caption"
        elif caption["status"] != "ok":
            entry["fate"] = "filtered_caption"
        elif not decodable(data):
            entry["fate"] = "undecodable_image"
        else:
            split = "val" if unit_hash(params.seed, "split", uid) < params.val_fraction else "train"
            long_caption = caption["caption"] if params.long_text == "caption" else ground_truth(row)
            short, rule = short_text(params, uid, long_caption, row.get("caption") or "")
            entry.update(fate=split, long=long_caption, short=short,
                         meta=json.dumps(sample_json(row, caption, rule), sort_keys=True))
            kept[uid] = data
        rows.append(entry)
    index = pd.DataFrame(rows)
    if index["uid"].duplicated().any():
        raise ShardInputError(f"{raw_dir}: several images share a uid")
    index["order"] = [unit_hash(params.seed, "order", uid) for uid in index["uid"]]
    return index.sort_values(["order", "uid"]).drop(columns="order").reset_index(drop=True), kept, len(captions)


def _member(name: str, data: bytes) -> tuple[tarfile.TarInfo, io.BytesIO]:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info, io.BytesIO(data)


def write_shard(path: Path, samples: Iterator[tuple[str, bytes, str, str, str]]) -> None:
    """One tar of (uid, image bytes, long, short, json) samples, written to a temp name then renamed."""
    with atomic_path(path) as tmp, tarfile.open(tmp, "w", format=tarfile.GNU_FORMAT) as archive:
        for uid, image, long, short, meta in samples:
            for suffix, data in (("jpg", image), ("long.txt", long.encode()), ("short.txt", short.encode()),
                                 ("json", meta.encode())):
                archive.addfile(*_member(f"{uid}.{suffix}", data))


def write(index: pd.DataFrame, images: dict[str, bytes], out_dir: Path, samples_per_shard: int) -> dict:
    """Write train/ and val/ shards and the index; returns shard counts per split."""
    shard_counts = {}
    column = pd.Series(pd.NA, index=index.index, dtype="string")
    for split in ("train", "val"):
        folder = out_dir / split
        folder.mkdir(parents=True, exist_ok=True)
        chosen = index[index["fate"] == split]
        starts = range(0, len(chosen), samples_per_shard)
        for number, start in enumerate(tqdm(starts, desc=f"shard: write {split}", unit="tar")):
            part = chosen.iloc[start:start + samples_per_shard]
            name = f"{split}-{number:06d}.tar"
            write_shard(folder / name, ((r.uid, images[r.uid], r.long, r.short, r.meta) for r in part.itertuples()))
            column[part.index] = f"{split}/{name}"
        shard_counts[split] = len(starts)
    listing = index[["uid", "key", "raw_shard", "fate"]].assign(shard=column)
    write_parquet(out_dir / "index.parquet", listing)
    return shard_counts


def count(index: pd.DataFrame, caption_rows: int, shard_counts: dict) -> dict:
    """The stage's accounting; raises if it does not add up."""
    fates = index["fate"].value_counts().to_dict() if len(index) else {}
    metrics = {
        "raw_images": len(index),
        "captioned": caption_rows,
        **{f"dropped_{reason}": int(fates.get(reason, 0)) for reason in DROP_REASONS},
        "train": int(fates.get("train", 0)),
        "val": int(fates.get("val", 0)),
        "train_shards": shard_counts["train"],
        "val_shards": shard_counts["val"],
    }
    placed = metrics["train"] + metrics["val"] + sum(metrics[f"dropped_{r}"] for r in DROP_REASONS)
    if placed != metrics["raw_images"]:
        raise RuntimeError(f"shard accounting does not add up: {placed} placed of {metrics['raw_images']}")
    return metrics


def run(params: ShardParams, raw_dir: Path, captions_dir: Path, out_dir: Path) -> dict:
    index, images, caption_rows = plan(raw_dir, captions_dir, params)
    shard_counts = write(index, images, out_dir, params.samples_per_shard)
    return count(index, caption_rows, shard_counts)
