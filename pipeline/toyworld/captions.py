"""Caption styles of the toy world, the prompts that ask for them, and a parser that scores captions against scenes.

A *style* is one phrasing of a scene's complete description; every style names the background, the object count
and every object with its size, colour, shape, fill and grid cell (3x3 grid). Within a style the wording varies
(synonyms, order of attributes, header phrasing), drawn deterministically from a seed, so captions stay diverse:

- ``sentences``: the canonical `toyworld.long_description` form ("In the top left cell there is a small red
  circle with a solid fill."), with a few alternative phrasings;
- ``natural``: the object first, then its cell ("There is a small red circle with a solid fill in the top left
  cell.");
- ``list``: all nine cells in raster order after a header, separated by semicolons ("top left: a small red solid
  circle; top center: empty; ...");
- ``rows``: row by row from top to bottom, columns named inside their row ("Top row: on the left a small red
  solid circle; in the middle nothing; ...");
- ``compact``: digits and keyed attributes for all nine cells ("beige background, 5 shapes; top left: size small,
  colour red, shape circle, fill solid; top center: empty; ...").

`PROMPTS` (pipeline/toy_prompts.py) are the strings the caption stage sends (one drawn per image);
`PROMPT_STYLES[i]` is the style prompt i asks for. `parse_caption` reads any style back into a `ParsedCaption`;
`score_captions` compares parsed captions with the scenes' ground truth. Pure python (stdlib only), so it imports in the main and the vLLM environment.
"""
import json
import random
import re
from dataclasses import dataclass, field

from pipeline.toy_prompts import PROMPT_STYLES, PROMPTS

# The toy world's vocabulary, copied from `pipeline.toyworld.scenes` (tests/pipeline/toyworld/test_captions.py checks
# they agree): scenes imports pandas, which the vLLM environment lacks, and this module must import in both environments.
COLOURS = ("red", "green", "blue", "yellow", "orange", "purple", "pink", "black")
BACKGROUNDS = ("white", "light gray", "beige")
SHAPES = ("circle", "square", "triangle", "diamond", "star", "cross")
SIZES = ("small", "large")
TEXTURES = ("solid", "striped", "outlined")
FILL_PHRASES = {"solid": "with a solid fill", "striped": "with a striped fill", "outlined": "drawn as an outline"}
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")


def cell_name(row: int, col: int, grid: int) -> str:
    """As `toyworld.cell_name`."""
    if grid == 3:
        rows, cols = ("top", "middle", "bottom"), ("left", "center", "right")
        return "center" if (row, col) == (1, 1) else f"{rows[row]} {cols[col]}"
    return f"row {row + 1}, column {col + 1}"

STYLES = ("sentences", "natural", "list", "rows", "compact")

assert len(PROMPTS) == len(PROMPT_STYLES) and set(PROMPT_STYLES) == set(STYLES)

GRID = 3
ROW_WORDS = ("top", "middle", "bottom")
COLUMN_WORDS = ("left", "center", "right")
# Wording variants (the first of each is the canonical toyworld wording).
SIZE_WORDS = {"small": ("small", "little"), "large": ("large", "big")}
FILL_LONG = {t: (FILL_PHRASES[t],) for t in TEXTURES}
FILL_LONG["outlined"] += ("drawn as an outline only",)
FILL_LONG["striped"] += ("with stripes",)
FILL_ADJ = {"solid": ("solid", "filled"), "striped": ("striped",), "outlined": ("outlined", "hollow")}
ROW_COLUMN_PHRASES = ("on the left", "in the middle", "on the right")


def _number(n: int) -> str:
    return NUMBER_WORDS[n] if n < len(NUMBER_WORDS) else str(n)


def _plural(n: int, word: str) -> str:
    return word if n == 1 else word + "s"


def _scene_dict(scene) -> dict:
    if isinstance(scene, str):
        return json.loads(scene)
    if isinstance(scene, dict):
        return scene
    return json.loads(scene.to_json())  # a toyworld.Scene


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _object_phrase(o: dict, rng: random.Random, long_fill: bool) -> str:
    """"small red circle with a solid fill" or "small red solid circle" (and variants), without an article."""
    size = rng.choice(SIZE_WORDS[o["size"]])
    if long_fill:
        return f"{size} {o['colour']} {o['shape']} {rng.choice(FILL_LONG[o['texture']])}"
    fill = rng.choice(FILL_ADJ[o["texture"]])
    if rng.random() < 0.5:
        return f"{size} {o['colour']} {fill} {o['shape']}"
    return f"{size} {fill} {o['colour']} {o['shape']}"


def _with_article(phrase: str) -> str:
    return f"{_article(phrase)} {phrase}"


def _cell(o: dict) -> str:
    return cell_name(o["row"], o["col"], GRID)


def describe(scene, style: str, seed: int = 0) -> str:
    """The full description of `scene` (a toyworld.Scene, its JSON or dict) in `style`; wording drawn from seed."""
    s = _scene_dict(scene)
    if s.get("grid", GRID) != GRID:
        raise ValueError("toy captions are defined for a 3x3 grid")
    rng = random.Random(f"{seed}:{style}")
    objects = sorted(s["objects"], key=lambda o: (o["row"], o["col"]))
    n, bg = len(objects), s["background"]
    empty = GRID * GRID - n

    if style == "sentences":
        header = rng.choice((
            f"A {bg} background with {_number(n)} {_plural(n, 'shape')} arranged on a three by three grid.",
            f"{_number(n).capitalize()} {_plural(n, 'shape')} arranged on a three by three grid over a {bg} "
            "background.",
            f"This image shows {_number(n)} {_plural(n, 'shape')} on a {bg} background, on a three by three grid.",
        ))
        parts = [header]
        for o in objects:
            what = _with_article(_object_phrase(o, rng, long_fill=True))
            parts.append(rng.choice((
                f"In the {_cell(o)} cell there is {what}.",
                f"In the {_cell(o)} cell there is {what}.",
                f"The {_cell(o)} cell holds {what}.",
            )))
        if empty:
            parts.append(f"The other {_number(empty)} {'cells are' if empty != 1 else 'cell is'} empty.")
        return " ".join(parts)

    if style == "natural":
        parts = [rng.choice((
            f"This picture shows {_number(n)} {_plural(n, 'shape')} on a {bg} background.",
            f"The picture has a {bg} background and {_number(n)} {_plural(n, 'object')} on a three by three grid.",
        ))]
        for o in objects:
            what = _with_article(_object_phrase(o, rng, long_fill=rng.random() < 0.5))
            parts.append(rng.choice((
                f"There is {what} in the {_cell(o)} cell.",
                f"{what.capitalize()} sits in the {_cell(o)} cell.",
                f"We see {what} in the {_cell(o)} cell.",
            )))
        if empty:
            parts.append(f"{_number(empty).capitalize()} {'cells are' if empty != 1 else 'cell is'} empty.")
        return " ".join(parts)

    if style == "list":
        header = rng.choice((
            f"{_number(n).capitalize()} {_plural(n, 'object')} on a {bg} background, cell by cell:",
            f"A {bg} background with {_number(n)} {_plural(n, 'shape')} on a three by three grid:",
        ))
        by_cell = {(o["row"], o["col"]): o for o in objects}
        items = []
        for r in range(GRID):
            for c in range(GRID):
                o = by_cell.get((r, c))
                if o is None:
                    items.append(f"{cell_name(r, c, GRID)}: empty")
                else:
                    items.append(f"{_cell(o)}: {_with_article(_object_phrase(o, rng, long_fill=rng.random() < 0.5))}")
        return header + " " + "; ".join(items) + "."

    if style == "rows":
        parts = [f"A {bg} background with {_number(n)} {_plural(n, 'shape')}, row by row."]
        by_cell = {(o["row"], o["col"]): o for o in objects}
        for r in range(GRID):
            in_row = [c for c in range(GRID) if (r, c) in by_cell]
            if not in_row:
                parts.append(f"{ROW_WORDS[r].capitalize()} row: empty.")
                continue
            items = []
            for c in range(GRID):
                o = by_cell.get((r, c))
                if o is None:
                    items.append(f"{ROW_COLUMN_PHRASES[c]} nothing")
                else:
                    items.append(f"{ROW_COLUMN_PHRASES[c]} {_with_article(_object_phrase(o, rng, long_fill=False))}")
            parts.append(f"{ROW_WORDS[r].capitalize()} row: " + "; ".join(items) + ".")
        return " ".join(parts)

    if style == "compact":
        parts = [rng.choice((f"{bg} background, {n} {_plural(n, 'shape')}", f"{n} {_plural(n, 'shape')}, "
                                                                               f"{bg} background"))]
        by_cell = {(o["row"], o["col"]): o for o in objects}
        for r in range(GRID):
            for c in range(GRID):
                o = by_cell.get((r, c))
                if o is None:
                    parts.append(f"{cell_name(r, c, GRID)}: empty")
                    continue
                size = rng.choice(SIZE_WORDS[o["size"]])
                fill = rng.choice(FILL_ADJ[o["texture"]])
                parts.append(f"{_cell(o)}: size {size}, colour {o['colour']}, shape {o['shape']}, fill {fill}")
        return "; ".join(parts) + "."

    raise ValueError(f"unknown style {style!r}; expected one of {STYLES}")


def style_for_prompt(prompt: str) -> str:
    return PROMPT_STYLES[PROMPTS.index(prompt)]


# ----------------------------------------------------------------------------------------------------------------
# Parsing

_NUMBERS = {w: i for i, w in enumerate(NUMBER_WORDS)}
_NUM = r"(\d+|" + "|".join(NUMBER_WORDS) + r")"
_BG = "|".join(re.escape(b) for b in BACKGROUNDS)
_COUNT_RE = re.compile(rf"\b{_NUM} (?:shapes?|objects?)\b")
_BG_RE = re.compile(rf"\b({_BG}) background\b|\bbackground(?: is|:)? ({_BG})\b")
_FULL_CELL_RE = re.compile(r"\b(top|middle|bottom) (left|center|right)\b|\bcenter\b")
_ROW_HEAD_RE = re.compile(r"\b(top|middle|bottom) row\b")
_ROW_COLUMN_RE = re.compile(r"\b(left|middle|right)\b")
_WORDS = {
    "colour": {c: (c,) for c in COLOURS},
    "shape": {s: (s,) for s in SHAPES},
    "size": {"small": ("small", "little"), "large": ("large", "big")},
    "fill": {"solid": ("solid", "filled"), "striped": ("striped", "stripes"),
             "outlined": ("outline", "outlined", "hollow")},
}
_WORD_RES = {
    attr: [(value, re.compile(r"\b(?:" + "|".join(words) + r")\b")) for value, words in table.items()]
    for attr, table in _WORDS.items()
}


@dataclass
class ParsedObject:
    cell: tuple[int, int] | None  # None: no cell, or more than one, named in its clause
    colour: str | None  # None: missing or ambiguous (two values in one clause)
    shape: str | None
    size: str | None
    fill: str | None


@dataclass
class ParsedCaption:
    background: str | None = None
    count: int | None = None
    objects: list[ParsedObject] = field(default_factory=list)


def _attribute(attr: str, clause: str) -> str | None:
    found = {value for value, pattern in _WORD_RES[attr] if pattern.search(clause)}
    return found.pop() if len(found) == 1 else None


def parse_caption(text: str) -> ParsedCaption:
    """Read background, stated object count and objects from a caption of any style (or anything else).

    The text is split into clauses at `.`, `;`, `|` and newlines. A clause that names a shape is one object; its
    colour, size and fill are the words of that clause (None when missing or when two values appear); its cell is a
    full cell name ("top left", "center") in the clause, or, after a row heading ("top row"), a column word of the
    clause ("left", "middle", "right") in that row. The first "<number> shapes/objects" is the count, the first
    "<background> background" (or "background: <background>") the background.
    """
    text = " ".join(str(text).lower().replace("grey", "gray").split())
    parsed = ParsedCaption()
    if m := _COUNT_RE.search(text):
        parsed.count = int(m.group(1)) if m.group(1).isdigit() else _NUMBERS[m.group(1)]
    if m := _BG_RE.search(text):
        parsed.background = m.group(1) or m.group(2)
    row = None
    for clause in re.split(r"[.;|\n]+", text):
        heads = _ROW_HEAD_RE.findall(clause)
        if heads:
            row = ROW_WORDS.index(heads[-1])
            clause = _ROW_HEAD_RE.sub(" ", clause)
        shape = _attribute("shape", clause)
        if shape is None and not any(p.search(clause) for _, p in _WORD_RES["shape"]):
            continue  # no object in this clause
        cells = set()
        for m in _FULL_CELL_RE.finditer(clause):
            cells.add((1, 1) if m.group(1) is None else (ROW_WORDS.index(m.group(1)),
                                                         COLUMN_WORDS.index(m.group(2))))
        if not cells and row is not None:
            cells = {(row, ("left", "middle", "right").index(w)) for w in _ROW_COLUMN_RE.findall(clause)}
        parsed.objects.append(ParsedObject(
            cell=cells.pop() if len(cells) == 1 else None,
            colour=_attribute("colour", clause),
            shape=shape,
            size=_attribute("size", clause),
            fill=_attribute("fill", clause),
        ))
    return parsed


METRICS = ("count", "background", "cell", "colour", "shape", "size", "fill", "precision", "exact")
ATTRIBUTES = {"colour": "colour", "shape": "shape", "size": "size", "fill": "texture"}  # parsed name: scene name


@dataclass
class ObjectVerdict:
    """One ground-truth object against a caption: ``found`` is the one parsed object naming its cell (None when no
    object, or more than one, does)."""

    truth: dict
    found: ParsedObject | None

    @property
    def checks(self) -> dict[str, bool]:
        """{attribute: right} of the found object (empty when not found)."""
        if self.found is None:
            return {}
        return {name: getattr(self.found, name) == self.truth[key] for name, key in ATTRIBUTES.items()}


@dataclass
class CaptionVerdict:
    """One caption against its scene: the parse, count and background right or not, each ground-truth object's
    verdict, and ``placed``, the parsed objects that are the only object of a cell holding a ground-truth object."""

    parsed: ParsedCaption
    truth: dict
    count_ok: bool
    background_ok: bool
    objects: list[ObjectVerdict]
    placed: int

    @property
    def exact(self) -> bool:
        return (self.count_ok and self.background_ok and self.placed == len(self.parsed.objects)
                and all(v.found is not None and all(v.checks.values()) for v in self.objects))


def judge_caption(text: str, scene) -> CaptionVerdict:
    """Compare one caption with its scene (a toyworld.Scene, its JSON or dict), object by object."""
    truth = _scene_dict(scene)
    parsed = parse_caption(text or "")
    by_cell: dict = {}
    for p in parsed.objects:
        by_cell.setdefault(p.cell, []).append(p)
    verdicts = []
    for o in truth["objects"]:
        found = by_cell.get((o["row"], o["col"]), [])
        verdicts.append(ObjectVerdict(o, found[0] if len(found) == 1 else None))
    truth_cells = {(o["row"], o["col"]) for o in truth["objects"]}
    placed = sum(1 for cell, found in by_cell.items() if cell in truth_cells and len(found) == 1)
    return CaptionVerdict(parsed, truth, parsed.count == len(truth["objects"]),
                          parsed.background == truth["background"], verdicts, placed)


def score_captions(pairs) -> dict:
    """Score (caption text, scene JSON) pairs; every metric lies in [0, 1] (higher is better).

    - count: share of captions whose stated object count ("five shapes", "5 objects") equals the truth;
    - background: share of captions naming the right background;
    - cell: over all ground-truth objects of all captions, the share whose cell is named by exactly one parsed
      object of the caption (the object is "found"; two objects claiming one cell find nothing);
    - colour / shape / size / fill: over all ground-truth objects, the share that are found and whose found
      object has that attribute right (a missing or ambiguous attribute is wrong);
    - precision: over all parsed objects of all captions, the share that are the unique object of a cell that
      holds a ground-truth object (hallucinated, duplicated or unplaced objects lower it; 1.0 when none parsed);
    - exact: share of captions fully right: count, background, every object with all five attributes, and no
      parsed object beyond them.
    Captions that parse to nothing score 0 on everything they miss; no pair is ever skipped.
    """
    totals = dict.fromkeys(METRICS, 0)
    n_captions = n_objects = n_parsed = 0
    for text, scene in pairs:
        verdict = judge_caption(text, scene)
        n_captions += 1
        totals["count"] += verdict.count_ok
        totals["background"] += verdict.background_ok
        for found in verdict.objects:
            n_objects += 1
            totals["cell"] += found.found is not None
            for name, ok in found.checks.items():
                totals[name] += ok
        totals["precision"] += verdict.placed
        n_parsed += len(verdict.parsed.objects)
        totals["exact"] += verdict.exact
    result = {}
    for name in METRICS:
        denominator = {"cell": n_objects, "colour": n_objects, "shape": n_objects, "size": n_objects,
                       "fill": n_objects, "precision": n_parsed}.get(name, n_captions)
        result[name] = totals[name] / denominator if denominator else (1.0 if name == "precision" else 0.0)
    result["captions"] = n_captions
    return result
