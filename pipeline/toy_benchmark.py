"""The held-out toy benchmark: toy-world scenes from a seed the training world does not use.

Written in the layout `fixclip/eval/benchmarks/toy.py` reads:
- retrieval: `num_images` scenes of the training world's shape (grid, object counts, textures, image size), each
  with its long description and a short caption (its alt text, or the long description's first sentence);
- zero-shot: `num_classification_images` single-object scenes labelled "<colour> <shape>" (48 classes), prompted
  with `templates`, e.g. "a photo of a red circle.".
Scenes are indexed 0..num_images-1 (retrieval) then on (classification), all under `params.seed`.
"""
import json
from pathlib import Path

from tqdm import tqdm

from pipeline.params.evaluate import ToyBenchmarkParams
from pipeline.outputs import write_json
from pipeline.params.source import ToyWorldParams
from pipeline.short_text import first_sentence
from pipeline.toyworld import COLOURS, SHAPES, make_record, write_png


class HeldOutError(ValueError):
    """The benchmark would share its seed (and so its scenes) with the training world."""


def classnames() -> list[str]:
    return [f"{colour} {shape}" for colour in COLOURS for shape in SHAPES]


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(row, sort_keys=True) + "\n" for row in rows), encoding="utf-8")


def generate(params: ToyBenchmarkParams, world: ToyWorldParams, out_dir: Path) -> dict:
    """Render the benchmark into `out_dir`; returns its counts."""
    if params.seed == world.seed:
        raise HeldOutError(f"evaluate.toy.seed ({params.seed}) equals source.toyworld.seed: not held out")
    images = out_dir / "images"
    images.mkdir(parents=True, exist_ok=True)
    shape = dict(image_size=world.image_size, grid=world.grid, textures=world.textures)

    retrieval = []
    for index in tqdm(range(params.num_images), desc="toy benchmark: scenes", unit="img"):
        record = make_record(params.seed, index, min_objects=world.min_objects, max_objects=world.max_objects, **shape)
        write_png(record.image, images / f"{record.uid}.png")
        short = record.alt_text if params.short_text == "alt_text" else first_sentence(record.long_description)
        retrieval.append({"image": f"images/{record.uid}.png", "uid": record.uid, "scene": record.scene_json,
                          "long_caption": record.long_description, "short_caption": short})

    classification = []
    for index in tqdm(range(params.num_images, params.num_images + params.num_classification_images),
                      desc="toy benchmark: single objects", unit="img"):
        record = make_record(params.seed, index, min_objects=1, max_objects=1, **shape)
        write_png(record.image, images / f"{record.uid}.png")
        obj = json.loads(record.scene_json)["objects"][0]
        classification.append({"image": f"images/{record.uid}.png", "uid": record.uid, "scene": record.scene_json,
                               "label": f"{obj['colour']} {obj['shape']}"})

    _write_jsonl(out_dir / "retrieval.jsonl", retrieval)
    _write_jsonl(out_dir / "classification.jsonl", classification)
    write_json(out_dir / "classes.json", {"classnames": classnames(), "templates": list(params.templates)})
    return {"retrieval_images": len(retrieval), "classification_images": len(classification),
            "classes": len(classnames())}
