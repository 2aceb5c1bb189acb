"""The held-out toy benchmark written by the evaluate stage (``pipeline/toyworld/benchmark.py``):

    root/images/<uid>.png
    root/retrieval.jsonl        {"image": "images/<uid>.png", "long_caption": ..., "short_caption": ...}
    root/classification.jsonl   {"image": "images/<uid>.png", "label": "<classname>"}
    root/classes.json           {"classnames": [...], "templates": ["a photo of a {c}.", ...]}
"""
import json
from pathlib import Path

from .types import Benchmark, ClassificationBenchmark, RetrievalBenchmark, require_file

TASKS = ("long_retrieval", "short_retrieval", "zeroshot")


def _records(path: Path) -> list[dict]:
    lines = require_file(path, "toy benchmark file").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def load(root: str, task: str) -> Benchmark:
    """``long_retrieval`` / ``short_retrieval``: one long / short caption per image; ``zeroshot``: class labels."""
    if task not in TASKS:
        raise ValueError(f"unknown toy task {task!r}; expected one of {TASKS}")
    if task == "zeroshot":
        classes = json.loads(require_file(Path(root, "classes.json"), "toy classes").read_text(encoding="utf-8"))
        index = {name: i for i, name in enumerate(classes["classnames"])}
        records = _records(Path(root, "classification.jsonl"))
        return ClassificationBenchmark([Path(root, r["image"]) for r in records], [index[r["label"]] for r in records],
                                       classes["classnames"], classes["templates"])
    field = "long_caption" if task == "long_retrieval" else "short_caption"
    records = _records(Path(root, "retrieval.jsonl"))
    return RetrievalBenchmark([Path(root, r["image"]) for r in records], [[r[field]] for r in records])
