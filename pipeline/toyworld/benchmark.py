"""The held-out toy benchmark: toy-world scenes from a seed the training world does not use.

Written in the layout `fixclip/eval/benchmarks/toy.py` reads:
- retrieval: `num_images` scenes in twin pairs. Scene 2k is drawn with `min_objects`..`source.toyworld.max_objects`
  objects (5+ objects: every description exceeds CLIP's 77 tokens); scene 2k+1 is its twin, equal but for the
  colour or the shape of the last-described object, drawn with the same jitter. The twins' long descriptions share
  their first 77 tokens, so a model that reads only 77 tokens cannot tell them apart: long-text retrieval rewards
  reading beyond 77. Each scene has its long description and a short caption (alt text or first sentence).
- zero-shot: `num_classification_images` single-object scenes labelled "<colour> <shape>" (48 classes), prompted
  with `templates`, e.g. "a photo of a red circle.".
Images pass through img2dataset's own resizer with the `download` params, so they are encoded exactly like the
training images (size, resize mode, format, quality): no domain gap between benchmark and training data.
`stats.json` reports the share of descriptions over 77 tokens and of twin pairs equal in their first 77 tokens.
"""
import io
import json
import os
from pathlib import Path

import numpy as np
import open_clip
from tqdm import tqdm

from pipeline.outputs import write_bytes, write_json
from pipeline.params.download import DownloadParams
from pipeline.params.evaluate import ToyBenchmarkParams
from pipeline.params.source import ToyWorldParams
from pipeline.shard.short_text import first_sentence
from pipeline.toyworld.scenes import COLOURS, SHAPES, ToyRecord, make_record, sample_scene, scene_record, twin_scene

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # img2dataset's albumentations phones home at import
BASE_CONTEXT = 77


class HeldOutError(ValueError):
    """The benchmark would share its seed (and so its scenes) with the training world."""


def classnames() -> list[str]:
    return [f"{colour} {shape}" for colour in COLOURS for shape in SHAPES]


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    write_bytes(path, "".join(json.dumps(row, sort_keys=True) + "\n" for row in rows).encode())


class _Encoder:
    """PNG -> the bytes img2dataset would store for it under the `download` params."""

    def __init__(self, download: DownloadParams):
        from img2dataset.resizer import Resizer  # here: it imports cv2 and albumentations (seconds)

        self.suffix = download.encode_format
        self.resizer = Resizer(download.image_size, download.resize_mode, download.resize_only_if_bigger,
                               encode_quality=download.encode_quality, encode_format=download.encode_format,
                               max_image_area=download.max_image_area)

    def __call__(self, record: ToyRecord) -> bytes:
        png = io.BytesIO()
        record.image.save(png, format="PNG")
        png.seek(0)
        encoded, *_, error = self.resizer(png)
        if error is not None:
            raise RuntimeError(f"{record.uid}: img2dataset's resizer failed: {error}")
        return encoded


def _retrieval_records(params: ToyBenchmarkParams, world: ToyWorldParams) -> list[ToyRecord]:
    records = []
    for index in range(0, params.num_images, 2):
        scene = sample_scene(params.seed, index, world.grid, params.min_objects, world.max_objects, world.textures)
        twin = twin_scene(scene, np.random.default_rng([params.seed, index, 2]))
        records.append(scene_record(scene, params.seed, index, world.image_size))
        records.append(scene_record(twin, params.seed, index + 1, world.image_size, draw_key=index))
    return records


def text_stats(long_texts: list[str]) -> dict:
    """Share of texts longer than 77 CLIP tokens, and of twin pairs (2k, 2k+1) equal in their first 77 tokens."""
    tokenizer = open_clip.get_tokenizer("ViT-B-32")
    lengths = (tokenizer(long_texts, context_length=1024) != 0).sum(dim=1)
    cut = tokenizer(long_texts, context_length=BASE_CONTEXT)
    same = (cut[0::2] == cut[1::2]).all(dim=1)
    return {"descriptions": len(long_texts), "share_over_77_tokens": round(float((lengths > BASE_CONTEXT).float().mean()), 4),
            "tokens_median": int(lengths.median()), "tokens_max": int(lengths.max()),
            "twin_pairs": int(same.numel()), "share_twins_equal_in_first_77_tokens": round(float(same.float().mean()), 4)}


def generate(params: ToyBenchmarkParams, world: ToyWorldParams, download: DownloadParams, out_dir: Path) -> dict:
    """Render the benchmark into `out_dir`; returns its counts and text statistics (also in stats.json)."""
    if params.seed == world.seed:
        raise HeldOutError(f"evaluate.toy.seed ({params.seed}) equals source.toyworld.seed: not held out")
    if params.min_objects > world.max_objects:
        raise ValueError(f"evaluate.toy.min_objects ({params.min_objects}) exceeds source.toyworld.max_objects")
    images = out_dir / "images"
    images.mkdir(parents=True, exist_ok=True)
    encode = _Encoder(download)

    def save(record: ToyRecord) -> str:
        path = f"images/{record.uid}.{encode.suffix}"
        write_bytes(out_dir / path, encode(record))
        return path

    retrieval = []
    for record in tqdm(_retrieval_records(params, world), desc="toy benchmark: twin scenes", unit="img"):
        short = record.alt_text if params.short_text == "alt_text" else first_sentence(record.long_description)
        retrieval.append({"image": save(record), "uid": record.uid, "scene": record.scene_json,
                          "long_caption": record.long_description, "short_caption": short})

    classification = []
    for index in tqdm(range(params.num_images, params.num_images + params.num_classification_images),
                      desc="toy benchmark: single objects", unit="img"):
        record = make_record(params.seed, index, world.image_size, world.grid, 1, 1, world.textures)
        obj = json.loads(record.scene_json)["objects"][0]
        classification.append({"image": save(record), "uid": record.uid, "scene": record.scene_json,
                               "label": f"{obj['colour']} {obj['shape']}"})

    _write_jsonl(out_dir / "retrieval.jsonl", retrieval)
    _write_jsonl(out_dir / "classification.jsonl", classification)
    write_json(out_dir / "classes.json", {"classnames": classnames(), "templates": list(params.templates)})
    stats = {"retrieval_images": len(retrieval), "classification_images": len(classification),
             "classes": len(classnames()), **text_stats([r["long_caption"] for r in retrieval])}
    write_json(out_dir / "stats.json", stats)
    return stats
