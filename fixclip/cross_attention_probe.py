"""What a diffusion model's cross-attention can read from a text encoder, on CPU in minutes (`make diffusion`;
docs/export.md, "What cross-attention can read past token 77").

    python -m fixclip.cross_attention_probe [--out build/diffusion] [--seeds 0 1 2]

A UNet reads a prompt through cross-attention over the text encoder's token states (``FixClip.token_states``, the
export's ``last_hidden_state``). The probe puts a small decoder in the UNet's place: 9 learned cell queries
cross-attend to a frozen encoder's states and predict each cell of the toy world's 3 x 3 grid (empty, or an object's
colour and shape). It is trained on the run's training descriptions (data/urls.parquet: the ground-truth long
description and scene of every training image) and scored on the held-out scenes of the toy benchmark's test split
(data/toy_benchmark/retrieval.jsonl): per object, colour-and-shape right in its cell, split by whether the object's
mention starts before or after token 77. Encoders: the base CLIP (77 tokens: past 77 it is at chance by
construction), the trained FIX-CLIP (models/fixclip), and stretch-only and Long-CLIP, trained here on the run's
shards with params.yaml's `train:` section (written once to --out, reused while their config is the same).
"""
import argparse
import json
import re
import statistics
import time
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F
import yaml
from torch import nn
from tqdm import tqdm

from .model import FixClip
from .model_folder import load_base, load_model_folder
from .train.config import RunDirs, TrainConfig
from .train.loop import train

COLOURS = ("red", "green", "blue", "yellow", "orange", "purple", "pink", "black")  # the toy world's
SHAPES = ("circle", "square", "triangle", "diamond", "star", "cross")
ROWS, COLUMNS = ("top", "middle", "bottom"), ("left", "center", "right")
CELLS = 9
BOUNDARY = 77  # the base CLIP's context
# The comparison encoders trained here: the params' train section with these changes.
TRAINED_HERE = {"stretch-only": {"fixclip": {"dual_branch": False, "regional_prompts": False, "hfa": False}},
                "longclip": {"method": "longclip"}}


def cell_name(row: int, col: int) -> str:
    return "center" if (row, col) == (1, 1) else f"{ROWS[row]} {COLUMNS[col]}"


def target(scene: dict) -> list[int]:
    """Each cell's class: 0 empty, else 1 + colour * len(SHAPES) + shape."""
    cells = [0] * CELLS
    for o in scene["objects"]:
        cells[o["row"] * 3 + o["col"]] = 1 + COLOURS.index(o["colour"]) * len(SHAPES) + SHAPES.index(o["shape"])
    return cells


def mention_tokens(caption: str, scene: dict, tokenizer) -> list[int]:
    """Per cell, the token position where the caption's sentence about its object starts (-1: an empty cell)."""
    starts = [-1] * CELLS
    for o in scene["objects"]:
        found = re.search(rf"\b[Tt]he {cell_name(o['row'], o['col'])} cell\b", caption)
        if found is None:
            raise ValueError(f"no mention of the {cell_name(o['row'], o['col'])} cell in: {caption[:80]}...")
        sentence = caption.rfind(". ", 0, found.start())
        prefix = caption[:sentence + 1] if sentence >= 0 else ""
        starts[o["row"] * 3 + o["col"]] = 1 + len(tokenizer.encode(prefix))  # after the start token
    return starts


def colour_of(classes: torch.Tensor) -> torch.Tensor:
    """The colour index of each cell class (meaningless for 0, an empty cell)."""
    return (classes - 1).div(len(SHAPES), rounding_mode="floor")


def shape_of(classes: torch.Tensor) -> torch.Tensor:
    return (classes - 1) % len(SHAPES)


def by_mention(right: torch.Tensor, targets: torch.Tensor, starts: torch.Tensor, name: str) -> dict:
    """% of the objects (cells whose target is not empty) that are ``right``, split by whether their mention starts
    before or after token 77, with the object counts."""
    objects, scores = targets > 0, {}
    for part, where in (("before", objects & (starts < BOUNDARY)), ("after", objects & (starts >= BOUNDARY))):
        scores[f"{part}_objects"] = int(where.sum())
        scores[f"{part}_{name}"] = 100 * float(right[where].float().mean()) if where.any() else None
    return scores


class CellDecoder(nn.Module):
    """Cell queries cross-attending to token states (as a UNet's cross-attention does), one class per cell."""

    def __init__(self, width: int, classes: int = 1 + len(COLOURS) * len(SHAPES), dim: int = 64, heads: int = 4):
        super().__init__()
        self.queries = nn.Parameter(0.02 * torch.randn(CELLS, dim))
        self.keys = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, dim))
        self.attend = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.head = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, classes))

    def forward(self, states: torch.Tensor, padding: torch.Tensor) -> torch.Tensor:
        keys = self.keys(states)
        queries = self.queries.expand(states.shape[0], -1, -1)
        read, _ = self.attend(queries, keys, keys, key_padding_mask=padding)
        return self.head(read + queries)


def encode(model: FixClip, captions: list[str], batch_size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Token states [N, L, D] at the model's context and the padding mask [N, L] (True: padding)."""
    tokens = model.tokenizer()(captions)
    with torch.inference_mode():
        states = torch.cat([model.token_states(tokens[i:i + batch_size]).float()
                            for i in range(0, len(tokens), batch_size)])
    return states, tokens == 0


def fit_and_score(train_set, test_set, seed: int, epochs: int = 30, batch_size: int = 64) -> dict:
    """Train a decoder on (states, padding, targets), score it per test object by where its mention starts."""
    (states, padding, targets), (test_states, test_padding, test_targets, starts) = train_set, test_set
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    decoder = CellDecoder(states.shape[-1])
    optimizer = torch.optim.AdamW(decoder.parameters(), lr=2e-3, weight_decay=0.01)
    for _ in range(epochs):
        for batch in torch.randperm(len(states), generator=generator).split(batch_size):
            loss = F.cross_entropy(decoder(states[batch], padding[batch]).flatten(0, 1), targets[batch].flatten())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    with torch.inference_mode():
        predicted = decoder.eval()(test_states, test_padding).argmax(-1)
    colour_right = (colour_of(predicted) == colour_of(test_targets)) & (predicted > 0)
    return {**by_mention(predicted == test_targets, test_targets, starts, "colour_shape"),
            **by_mention(colour_right, test_targets, starts, "colour"),
            "empty_cells": 100 * float((predicted == test_targets)[test_targets == 0].float().mean())}


def trained_encoder(name: str, changes: dict, params: dict, out: Path) -> Path:
    """The model folder of a comparison encoder, trained unless --out holds one of the same config."""
    section = json.loads(json.dumps(params["train"]))
    for key, value in changes.items():
        section[key] = {**section[key], **value} if isinstance(value, dict) else value
    cfg = TrainConfig.model_validate(section)
    folder, recorded = out / "models" / name, out / "models" / f"{name}.json"
    if not (recorded.is_file() and recorded.read_text() == cfg.model_dump_json() and (folder / "weights.pt").is_file()):
        print(f"probe: training {name} ({cfg.method}) on {cfg.shards}")
        train(cfg, RunDirs(folder, out / "checkpoints" / name, None, progress=True))
        recorded.write_text(cfg.model_dump_json())
    return folder


def encoders(params: dict, out: Path) -> dict[str, FixClip]:
    base = params["train"]["base_model"]
    models = {"base CLIP (77 tokens)": load_base(base["config"], base["weights"]),
              "FIX-CLIP (models/fixclip)": load_model_folder("models/fixclip")}
    for name, changes in TRAINED_HERE.items():
        models[name] = load_model_folder(trained_encoder(name, changes, params, out))
    return models


def data(train_descriptions: Path, test_captions: Path, model: FixClip):
    frame = pd.read_parquet(train_descriptions, columns=["long_description", "scene"])
    test = [json.loads(line) for line in test_captions.read_text().splitlines()]
    scenes = [json.loads(s) for s in frame["scene"]]
    test_scenes = [json.loads(t["scene"]) for t in test]
    tokenizer = model.tokenizer()
    states, padding = encode(model, frame["long_description"].tolist())
    test_states, test_padding = encode(model, [t["long_caption"] for t in test])
    starts = torch.tensor([mention_tokens(t["long_caption"], s, tokenizer) for t, s in zip(test, test_scenes)])
    return ((states, padding, torch.tensor([target(s) for s in scenes])),
            (test_states, test_padding, torch.tensor([target(s) for s in test_scenes]), starts))


def table(results: dict[str, list[dict]]) -> str:
    """Markdown: per encoder, mean ± sd over seeds of each score."""
    def cell(rows: list[dict], key: str) -> str:
        values = [r[key] for r in rows]
        return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}" if len(values) > 1 else \
            f"{values[0]:.1f}"
    first = next(iter(results.values()))[0]
    lines = [f"| encoder | colour+shape, mention before token 77 ({first['before_objects']} objects) | after "
             f"({first['after_objects']}) | colour before | colour after | empty cells |", "|---|---|---|---|---|---|"]
    for name, rows in results.items():
        lines.append(f"| {name} | " + " | ".join(cell(rows, k) for k in (
            "before_colour_shape", "after_colour_shape", "before_colour", "after_colour", "empty_cells")) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m fixclip.cross_attention_probe",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--out", type=Path, default=Path("build/diffusion"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=30)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    params = yaml.safe_load(args.params.read_text())
    args.out.mkdir(parents=True, exist_ok=True)
    results = {}
    for name, model in encoders(params, args.out).items():
        train_set, test_set = data(Path("data/urls.parquet"), Path("data/toy_benchmark/retrieval.jsonl"), model.eval())
        results[name] = [fit_and_score(train_set, test_set, seed, args.epochs)
                         for seed in tqdm(args.seeds, desc=f"probe: {name}", unit="seed")]
    (args.out / "probe.json").write_text(json.dumps(results, indent=2) + "\n")
    print(table(results))
    print(f"probe: {len(results)} encoders x {len(args.seeds)} seeds in {time.perf_counter() - start:.0f} s "
          f"-> {args.out / 'probe.json'}")


if __name__ == "__main__":
    main()
