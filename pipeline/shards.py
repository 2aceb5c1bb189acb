"""The shard stage's library: join raw images with their captions into deterministic webdataset shards.

Every successfully downloaded image ends in `train`, `val`, or one named drop class, recorded in an index; the
counts add up. Bytes are reproducible: samples are ordered by a seeded hash of their uid, tar members carry
mtime 0, uid/gid 0 and empty owner names, and image bytes are copied as downloaded.

An image may have K captions (the caption stage's `captions_per_image`, read here from the caption rows). It is
kept if any is `ok`; `long.txt` is the first ok one. When K > 1 a sample also holds `long_0.txt` .. `long_{K-1}.txt`:
caption j where it is ok, else the first ok caption (counted in `substituted_captions`).
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


def load_captions(captions_dir: Path) -> dict[str, list[dict]]:
    """key -> its caption rows in caption_index order, from every captions parquet. A parquet without
    `caption_index` (written before the caption stage had `captions_per_image`) holds one caption per key."""
    captions: dict[str, dict[int, dict]] = {}
    for parquet in sorted(captions_dir.glob("*.parquet")):
        frame = pd.read_parquet(parquet)
        if "caption_index" not in frame:
            frame["caption_index"] = 0
        for row in frame.to_dict("records"):
            by_index = captions.setdefault(row["key"], {})
            index = int(row["caption_index"])
            if index in by_index:
                raise ShardInputError(f"{parquet}: key {row['key']!r} has caption {index} more than once")
            by_index[index] = row
    return {key: [by_index[i] for i in sorted(by_index)] for key, by_index in captions.items()}


def captions_per_image(captions: dict[str, list[dict]]) -> int:
    """K: the highest caption_index + 1; every captioned key must have captions 0 .. K-1."""
    per_image = 1 + max((int(c["caption_index"]) for rows in captions.values() for c in rows), default=0)
    for key, rows in captions.items():
        indices = [int(c["caption_index"]) for c in rows]
        if indices != list(range(per_image)):
            raise ShardInputError(f"key {key!r} has captions {indices}; with {per_image} per image it needs "
                                  f"0 .. {per_image - 1}")
    return per_image


def is_ok(caption: dict) -> bool:
    return caption["status"] == "ok"


def long_texts(params: ShardParams, row: dict, captions: list[dict]) -> tuple[str, list[str], int]:
    """(long text, text per caption_index, how many of those are substituted). The long text is the first ok
    caption; text j is caption j if ok, else the first ok caption. `long_text: ground_truth` uses the source's
    description for all of them."""
    if params.long_text == "ground_truth":
        truth = ground_truth(row)
        return truth, [truth] * len(captions), 0
    first_ok = next(c["caption"] for c in captions if is_ok(c))
    texts = [c["caption"] if is_ok(c) else first_ok for c in captions]
    return first_ok, texts, sum(not is_ok(c) for c in captions)


def _present(value) -> bool:
    return value is not None and not (isinstance(value, float) and value != value)


def prompt_id(caption: dict) -> int | None:
    return int(caption["prompt_id"]) if _present(caption.get("prompt_id")) else None


def sample_json(row: dict, captions: list[dict], rule: str) -> dict:
    """The sample's metadata; model and prompt_id are the long text's caption's, `prompt_ids` (K > 1) all of them."""
    caption = next(c for c in captions if is_ok(c))
    meta = {
        "key": row["key"], "uid": row.get("uid", row["key"]), "url": row.get("url"),
        "alt_text": row.get("caption") or "", "caption_model": caption.get("model"),
        "prompt_id": prompt_id(caption),
        "short_text_rule": rule,
        "original_size": [int(row["original_width"]), int(row["original_height"])]
        if _present(row.get("original_width")) else None,
    }
    if len(captions) > 1:
        meta["prompt_ids"] = [prompt_id(c) for c in captions]
    if isinstance(row.get("long_description"), str):
        meta["long_description"] = row["long_description"]
    if isinstance(row.get("scene"), str):
        meta["scene"] = json.loads(row["scene"])
    return meta


def drop_reason(captions: list[dict] | None, data: bytes) -> str | None:
    """The drop class of an image, or None when it is kept."""
    if captions is None:
        return "no_caption"
    if not any(is_ok(c) for c in captions):
        return "filtered_caption"
    if not decodable(data):
        return "undecodable_image"
    return None


def plan(raw_dir: Path, captions_dir: Path, params: ShardParams) -> tuple[pd.DataFrame, dict[str, bytes], dict]:
    """Decide every raw image's fate; returns the index (one row per image), the kept images' bytes and what the
    captions hold (`captioned` images, `captions_per_image`)."""
    records = load_raw_records(raw_dir)
    captions = load_captions(captions_dir)
    per_image = captions_per_image(captions)
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
        entry = {"key": key, "uid": uid, "raw_shard": row["raw_shard"], "substituted": 0}
        image_captions = captions.get(key)
        data = images[key]
        reason = drop_reason(image_captions, data)
        if reason:
            entry["fate"] = reason
        else:
            split = "val" if unit_hash(params.seed, "split", uid) < params.val_fraction else "train"
            long_caption, per_caption, substituted = long_texts(params, row, image_captions)
            short, rule = short_text(params, uid, long_caption, row.get("caption") or "")
            entry.update(fate=split, long=long_caption, short=short, substituted=substituted,
                         per_caption=per_caption if per_image > 1 else [],
                         meta=json.dumps(sample_json(row, image_captions, rule), sort_keys=True))
            kept[uid] = data
        rows.append(entry)
    index = pd.DataFrame(rows)
    if index["uid"].duplicated().any():
        raise ShardInputError(f"{raw_dir}: several images share a uid")
    index["order"] = [unit_hash(params.seed, "order", uid) for uid in index["uid"]]
    index = index.sort_values(["order", "uid"]).drop(columns="order").reset_index(drop=True)
    return index, kept, {"captioned": len(captions), "captions_per_image": per_image}


def _member(name: str, data: bytes) -> tuple[tarfile.TarInfo, io.BytesIO]:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info, io.BytesIO(data)


def sample_members(image: bytes, long: str, per_caption: list[str], short: str, meta: str) -> list[tuple[str, bytes]]:
    """(suffix, bytes) of one sample: jpg, long.txt, long_0.txt .. (one per caption when K > 1), short.txt, json."""
    texts = [(f"long_{j}.txt", text.encode()) for j, text in enumerate(per_caption)]
    return [("jpg", image), ("long.txt", long.encode()), *texts, ("short.txt", short.encode()), ("json", meta.encode())]


def write_shard(path: Path, samples: Iterator[tuple[str, bytes, str, list[str], str, str]]) -> None:
    """One tar of (uid, image bytes, long, long per caption, short, json) samples, written to a temp name then
    renamed."""
    with atomic_path(path) as tmp, tarfile.open(tmp, "w", format=tarfile.GNU_FORMAT) as archive:
        for uid, *sample in samples:
            for suffix, data in sample_members(*sample):
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
            samples = ((r.uid, images[r.uid], r.long, r.per_caption, r.short, r.meta) for r in part.itertuples())
            write_shard(folder / name, samples)
            column[part.index] = f"{split}/{name}"
        shard_counts[split] = len(starts)
    listing = index[["uid", "key", "raw_shard", "fate"]].assign(shard=column)
    write_parquet(out_dir / "index.parquet", listing)
    return shard_counts


def count(index: pd.DataFrame, captions: dict, shard_counts: dict) -> dict:
    """The stage's accounting; raises if it does not add up."""
    fates = index["fate"].value_counts().to_dict() if len(index) else {}
    metrics = {
        "raw_images": len(index),
        **captions,
        "substituted_captions": int(index["substituted"].sum()),
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
    index, images, captions = plan(raw_dir, captions_dir, params)
    shard_counts = write(index, images, out_dir, params.samples_per_shard)
    return count(index, captions, shard_counts)
