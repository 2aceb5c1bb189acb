"""The held-out toy benchmark: toy-world scenes from a seed the training world does not use.

Written in the layout `fixclip/eval/benchmarks/toy.py` reads:
- retrieval: `num_images` scenes in twin pairs. Scene 2k is drawn with `min_objects`..`source.toyworld.max_objects`
  objects (5+ objects: every description exceeds CLIP's 77 tokens); scene 2k+1 is its twin, equal but for the
  colour or the shape of the last-described object, drawn with the same jitter. The twins' long descriptions share
  their first 77 tokens, so a model that reads only 77 tokens cannot tell them apart: long-text retrieval rewards
  reading beyond 77. Each scene has its long description and a short caption (alt text or first sentence).
- layout: `num_layout_images` scenes in layout-twin pairs: scene 2k+1 holds the same objects as scene 2k with two
  of them (differing in colour or shape) swapped between their cells. The bag of attributes is the same, so only a
  model that binds each object to its place tells the twins apart (what regional prompts are for).
- short scenes: `num_short_scene_images` scenes of one or two objects, each with its complete description (under
  77 tokens, all distinct): short text that a base CLIP which sees what the captions talk about can retrieve.
- zero-shot: `num_classification_images` single-object scenes labelled "<colour> <shape>" (48 classes), prompted
  with `templates`, e.g. "a photo of a red circle."; the same images are also classified by colour alone (8
  classes) and by shape alone (6) (see `fixclip/eval/benchmarks/toy.py`).
Images pass through img2dataset's own resizer with the `download` params, so they are encoded exactly like the
training images (size, resize mode, format, quality): no domain gap between benchmark and training data.
`stats.json` reports the share of descriptions over 77 tokens and of twin pairs equal in their first 77 tokens.
Each set draws its scenes from its own range of indices, so resizing one set leaves the others' scenes as they are.
"""
import io
import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import open_clip
from tqdm import tqdm

from core.outputs import write_bytes, write_json
from pipeline.params.download import DownloadParams
from pipeline.params.evaluate import ToyBenchmarkParams
from pipeline.params.source import ToyWorldParams
from pipeline.shard.short_text import first_sentence
from pipeline.toyworld.scenes import (COLOURS, SHAPES, Scene, ToyRecord, layout_twin_scene, make_record,
                                      sample_scene, scene_record, twin_scene)

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # img2dataset's albumentations phones home at import
BASE_CONTEXT = 77
LAYOUT_FIRST, SHORT_SCENES_FIRST = 1_000_000, 2_000_000  # first scene index of the layout and short-scene sets


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


def _pair_records(params: ToyBenchmarkParams, world: ToyWorldParams, first: int, count: int,
                  twin_of: Callable[[Scene, np.random.Generator], Scene]) -> list[ToyRecord]:
    """`count` scenes from index `first`, in pairs: scene 2k as drawn, scene 2k+1 its twin, with the same jitter."""
    records = []
    for index in range(first, first + count, 2):
        scene = sample_scene(params.seed, index, world.grid, params.min_objects, world.max_objects, world.textures)
        twin = twin_of(scene, np.random.default_rng([params.seed, index, 2]))
        records.append(scene_record(scene, params.seed, index, world.image_size))
        records.append(scene_record(twin, params.seed, index + 1, world.image_size, draw_key=index))
    return records


def _short_scene_records(params: ToyBenchmarkParams, world: ToyWorldParams) -> list[ToyRecord]:
    """Scenes of one or two objects with distinct descriptions (a scene whose description came before is skipped,
    so no two captions tie)."""
    records, seen, index = [], set(), SHORT_SCENES_FIRST
    while len(records) < params.num_short_scene_images:
        record = make_record(params.seed, index, world.image_size, world.grid, 1, 2, world.textures)
        if record.long_description not in seen:
            seen.add(record.long_description)
            records.append(record)
        index += 1
    return records


def _rounded_share(flags) -> float:
    return round(float(flags.float().mean()), 4)


def text_stats(long_texts: list[str], layout_texts: list[str], short_texts: list[str]) -> dict:
    """Share of texts longer than 77 CLIP tokens, and of twin pairs (2k, 2k+1) equal in their first 77 tokens."""
    tokenizer = open_clip.get_tokenizer("ViT-B-32")

    def lengths(texts):
        return (tokenizer(texts, context_length=1024) != 0).sum(dim=1)

    def pairs_equal_in_77(texts):
        cut = tokenizer(texts, context_length=BASE_CONTEXT)
        return (cut[0::2] == cut[1::2]).all(dim=1)

    long, same = lengths(long_texts), pairs_equal_in_77(long_texts)
    stats = {"descriptions": len(long_texts), "share_over_77_tokens": _rounded_share(long > BASE_CONTEXT),
             "tokens_median": int(long.median()), "tokens_max": int(long.max()),
             "twin_pairs": int(same.numel()), "share_twins_equal_in_first_77_tokens": _rounded_share(same)}
    if layout_texts:
        layout_same = pairs_equal_in_77(layout_texts)
        stats.update(layout_pairs=int(layout_same.numel()),
                     share_layout_twins_equal_in_first_77_tokens=_rounded_share(layout_same))
    if short_texts:
        short = lengths(short_texts)
        stats.update(short_scenes=len(short_texts), short_scene_tokens_max=int(short.max()),
                     share_short_scenes_within_77_tokens=_rounded_share(short <= BASE_CONTEXT))
    return stats


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
    twins = _pair_records(params, world, 0, params.num_images, twin_scene)
    for record in tqdm(twins, desc="toy benchmark: twin scenes", unit="img"):
        short = record.alt_text if params.short_text == "alt_text" else first_sentence(record.long_description)
        retrieval.append({"image": save(record), "uid": record.uid, "scene": record.scene_json,
                          "long_caption": record.long_description, "short_caption": short})

    layout_twins = _pair_records(params, world, LAYOUT_FIRST, params.num_layout_images, layout_twin_scene)
    layout = [{"image": save(record), "uid": record.uid, "scene": record.scene_json,
               "long_caption": record.long_description}
              for record in tqdm(layout_twins, desc="toy benchmark: layout twins", unit="img")]
    short_scenes = [{"image": save(record), "uid": record.uid, "scene": record.scene_json,
                     "caption": record.long_description}
                    for record in tqdm(_short_scene_records(params, world), desc="toy benchmark: short scenes",
                                       unit="img")]

    classification = []
    for index in tqdm(range(params.num_images, params.num_images + params.num_classification_images),
                      desc="toy benchmark: single objects", unit="img"):
        record = make_record(params.seed, index, world.image_size, world.grid, 1, 1, world.textures)
        obj = json.loads(record.scene_json)["objects"][0]
        classification.append({"image": save(record), "uid": record.uid, "scene": record.scene_json,
                               "label": f"{obj['colour']} {obj['shape']}", "colour": obj["colour"],
                               "shape": obj["shape"]})

    _write_jsonl(out_dir / "retrieval.jsonl", retrieval)
    _write_jsonl(out_dir / "layout.jsonl", layout)
    _write_jsonl(out_dir / "short_scenes.jsonl", short_scenes)
    _write_jsonl(out_dir / "classification.jsonl", classification)
    write_json(out_dir / "classes.json", {"classnames": classnames(), "colours": list(COLOURS),
                                          "shapes": list(SHAPES), "templates": list(params.templates)})
    stats = {"retrieval_images": len(retrieval), "layout_images": len(layout), "short_scene_images": len(short_scenes),
             "classification_images": len(classification), "classes": len(classnames()),
             **text_stats([r["long_caption"] for r in retrieval], [r["long_caption"] for r in layout],
                          [r["caption"] for r in short_scenes])}
    write_json(out_dir / "stats.json", stats)
    return stats
