"""The held-out toy benchmark written by the evaluate stage (``pipeline/toyworld/benchmark.py``):

    root/images/<uid>.jpg
    root/retrieval.jsonl        {"image": ..., "long_caption": ..., "short_caption": ...}   twin pairs (beyond 77)
    root/layout.jsonl           {"image": ..., "long_caption": ...}   layout-twin pairs (two objects swapped)
    root/short_scenes.jsonl     {"image": ..., "caption": ...}        one- and two-object scenes, complete captions
    root/classification.jsonl   {"image": ..., "label": "<colour> <shape>", "colour": ..., "shape": ...}
    root/classes.json           {"classnames": [...], "colours": [...], "shapes": [...], "templates": [...]}

Zero-shot by one attribute classifies the same single-object images by colour (8 classes) or by shape (6): a
class's prompts are every template with every value of the other attribute (``a photo of a red {c}.`` for the
shapes), ensembled as templates are, so neither attribute is asked about in words the other never uses.
"""
import json
from pathlib import Path
from typing import Literal

from .entry import Entry
from .types import Benchmark, ClassificationBenchmark, RetrievalBenchmark, require_file

RETRIEVAL = {"long_retrieval": ("retrieval.jsonl", "long_caption"),
             "short_retrieval": ("retrieval.jsonl", "short_caption"),
             "layout_retrieval": ("layout.jsonl", "long_caption"),
             "short_scene_retrieval": ("short_scenes.jsonl", "caption")}
ZEROSHOT = ("zeroshot", "zeroshot_colour", "zeroshot_shape")
TASKS = (*RETRIEVAL, *ZEROSHOT)


def _records(path: Path) -> list[dict]:
    lines = require_file(path, "toy benchmark file").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def _zeroshot(root: str, task: str) -> ClassificationBenchmark:
    classes = json.loads(require_file(Path(root, "classes.json"), "toy classes").read_text(encoding="utf-8"))
    records = _records(Path(root, "classification.jsonl"))
    images, templates = [Path(root, r["image"]) for r in records], classes["templates"]
    if task == "zeroshot":
        names, field = classes["classnames"], "label"
    elif task == "zeroshot_colour":
        names, field = classes["colours"], "colour"
        templates = [t.replace("{c}", "{c} " + shape) for t in templates for shape in classes["shapes"]]
    else:
        names, field = classes["shapes"], "shape"
        templates = [t.replace("{c}", colour + " {c}") for t in templates for colour in classes["colours"]]
    index = {name: i for i, name in enumerate(names)}
    return ClassificationBenchmark(images, [index[r[field]] for r in records], names, templates)


def load(root: str, task: str) -> Benchmark:
    """Retrieval tasks: one caption per image (``RETRIEVAL`` names the file and field); zero-shot tasks: class
    labels by colour and shape, by colour alone or by shape alone."""
    if task not in TASKS:
        raise ValueError(f"unknown toy task {task!r}; expected one of {TASKS}")
    if task in ZEROSHOT:
        return _zeroshot(root, task)
    file, field = RETRIEVAL[task]
    records = _records(Path(root, file))
    return RetrievalBenchmark([Path(root, r["image"]) for r in records], [[r[field]] for r in records])


class ToyEntry(Entry):
    kind: Literal["toy"]
    """The benchmark's adapter (fixclip/eval/benchmarks/README.md)."""
    adapter = load
    task: Literal["long_retrieval", "layout_retrieval", "short_retrieval", "short_scene_retrieval", "zeroshot",
                  "zeroshot_colour", "zeroshot_shape"]
    """Which toy benchmark set and protocol (docs/evaluation.md)."""

    @property
    def is_retrieval(self) -> bool:
        return not self.task.startswith("zeroshot")
