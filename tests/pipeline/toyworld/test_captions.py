"""Toy caption styles round-trip through the parser; the scorer counts wrong attributes and garbage as wrong."""
import json

import pytest

from pipeline.toyworld import captions, scenes
from pipeline.toyworld.captions import (METRICS, PROMPT_STYLES, PROMPTS, STYLES, describe, parse_caption,
                                   score_captions)
from pipeline.toyworld.scenes import make_record

SCENES = [make_record(12_345_678, i, image_size=64, grid=3, min_objects=3, max_objects=6, textures=True).scene_json
          for i in range(200)]
SCORED = [m for m in METRICS if m != "precision"]


@pytest.mark.parametrize("style", STYLES)
def test_every_style_round_trips_to_a_perfect_score(style):
    pairs = [(describe(scene, style, seed=i), scene) for i, scene in enumerate(SCENES)]
    scores = score_captions(pairs)
    assert scores["captions"] == len(SCENES)
    assert all(scores[m] == 1.0 for m in METRICS), scores


def test_wording_varies_with_seed_and_is_deterministic():
    scene = SCENES[0]
    for style in STYLES:
        assert describe(scene, style, seed=3) == describe(scene, style, seed=3)
    assert len({describe(scene, "sentences", seed=s) for s in range(20)}) > 1


def test_prompts_map_to_styles():
    assert 6 <= len(PROMPTS) <= 8 and len(PROMPT_STYLES) == len(PROMPTS)
    assert set(PROMPT_STYLES) == set(STYLES)


def test_one_wrong_colour_lowers_colour_and_exact_only():
    scene = json.loads(SCENES[1])
    obj = scene["objects"][0]
    right = describe(scene, "sentences", seed=0)
    wrong_colour = "green" if obj["colour"] != "green" else "red"
    bad = json.loads(json.dumps(scene))
    bad["objects"][0]["colour"] = wrong_colour
    wrong = describe(bad, "sentences", seed=0)
    assert right != wrong
    good, worse = score_captions([(right, scene)]), score_captions([(wrong, scene)])
    assert worse["colour"] < good["colour"] == 1.0
    assert worse["exact"] == 0.0 and good["exact"] == 1.0
    for metric in ("shape", "size", "fill", "cell", "count", "background"):
        assert worse[metric] == good[metric] == 1.0


@pytest.mark.parametrize("text", ["", "lorem ipsum dolor sit amet", "circle circle red blue", "!!! ;;; ..."])
def test_garbage_scores_zero(text):
    scores = score_captions([(text, SCENES[2])])
    assert all(scores[m] == 0.0 for m in SCORED), scores


def test_extra_object_breaks_exact_and_precision():
    scene = json.loads(SCENES[3])
    occupied = {(o["row"], o["col"]) for o in scene["objects"]}
    free = next((r, c) for r in range(3) for c in range(3) if (r, c) not in occupied)
    names = {(0, 0): "top left", (0, 1): "top center", (0, 2): "top right", (1, 0): "middle left", (1, 1): "center",
             (1, 2): "middle right", (2, 0): "bottom left", (2, 1): "bottom center", (2, 2): "bottom right"}
    text = describe(scene, "sentences", seed=0) + f" In the {names[free]} cell there is a small red circle."
    scores = score_captions([(text, scene)])
    assert scores["exact"] == 0.0 and scores["precision"] < 1.0 and scores["colour"] == 1.0


def test_parse_reads_a_rows_caption():
    parsed = parse_caption("A beige background with two shapes, row by row. Top row: on the left a big blue "
                           "striped star; in the middle nothing; on the right nothing. Middle row: empty. Bottom "
                           "row: on the left nothing; in the middle a little pink hollow cross; on the right nothing.")
    assert parsed.background == "beige" and parsed.count == 2
    assert [(o.cell, o.colour, o.shape, o.size, o.fill) for o in parsed.objects] == [
        ((0, 0), "blue", "star", "large", "striped"), ((2, 1), "pink", "cross", "small", "outlined")]


def test_vocabulary_matches_the_toy_world():
    assert captions.COLOURS == tuple(scenes.COLOURS)
    assert captions.BACKGROUNDS == tuple(scenes.BACKGROUNDS)
    assert captions.SHAPES == tuple(scenes.SHAPES)
    assert captions.SIZES == tuple(scenes.SIZES)
    assert captions.TEXTURES == tuple(scenes.TEXTURES)
    assert captions.FILL_PHRASES == scenes.FILL_PHRASES
    assert captions.NUMBER_WORDS == tuple(scenes.NUMBER_WORDS)
    for row in range(3):
        for col in range(3):
            assert captions.cell_name(row, col, 3) == scenes.cell_name(row, col, 3)
