"""The toy world: deterministic synthetic scenes of coloured shapes on a grid, with texts about them.

Each scene is drawn from `numpy.random.default_rng([seed, index])`, so scene i does not depend on how many scenes
are made or in what order. A scene has
- an image rendered with Pillow,
- a long description naming every object (colour, size, shape, fill, grid cell): the ground truth a long-text
  model should recover; with 3+ objects it exceeds CLIP's 77 tokens,
- a web-style alt text: short and partial, as real alt text is.
"""
import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw
from tqdm import tqdm

from pipeline.params.source import ToyWorldParams

COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 160, 60),
    "blue": (40, 80, 220),
    "yellow": (240, 210, 30),
    "orange": (245, 140, 20),
    "purple": (140, 60, 180),
    "pink": (240, 120, 190),
    "black": (20, 20, 20),
}
BACKGROUNDS = {"white": (250, 250, 250), "light gray": (200, 200, 200), "beige": (235, 222, 190)}
SHAPES = ("circle", "square", "triangle", "diamond", "star", "cross")
SIZES = {"small": 0.5, "large": 0.9}
TEXTURES = ("solid", "striped", "outlined")
FILL_PHRASES = {"solid": "with a solid fill", "striped": "with a striped fill", "outlined": "drawn as an outline"}
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")


@dataclass(frozen=True)
class ToyObject:
    colour: str
    shape: str
    size: str
    texture: str
    row: int
    col: int


@dataclass(frozen=True)
class Scene:
    background: str
    grid: int
    objects: tuple[ToyObject, ...]

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


def sample_scene(seed: int, index: int, grid: int, min_objects: int, max_objects: int, textures: bool) -> Scene:
    rng = np.random.default_rng([seed, index])
    count = int(rng.integers(min_objects, max_objects + 1))
    cells = sorted(rng.choice(grid * grid, size=count, replace=False).tolist())
    objects = tuple(
        ToyObject(
            colour=str(rng.choice(list(COLOURS))),
            shape=str(rng.choice(SHAPES)),
            size=str(rng.choice(list(SIZES))),
            texture=str(rng.choice(TEXTURES)) if textures else "solid",
            row=cell // grid,
            col=cell % grid,
        )
        for cell in cells
    )
    return Scene(background=str(rng.choice(list(BACKGROUNDS))), grid=grid, objects=objects)


def cell_name(row: int, col: int, grid: int) -> str:
    if grid == 3:
        rows, cols = ("top", "middle", "bottom"), ("left", "center", "right")
        return "center" if (row, col) == (1, 1) else f"{rows[row]} {cols[col]}"
    return f"row {row + 1}, column {col + 1}"


def _number(n: int) -> str:
    return NUMBER_WORDS[n] if n < len(NUMBER_WORDS) else str(n)


def long_description(scene: Scene) -> str:
    """Every object, in raster order: the complete ground truth of the image."""
    n, g = len(scene.objects), scene.grid
    parts = [
        f"A {scene.background} background with {_number(n)} shape{'s' if n != 1 else ''} "
        f"arranged on a {_number(g)} by {_number(g)} grid."
    ]
    for o in scene.objects:
        parts.append(
            f"In the {cell_name(o.row, o.col, g)} cell there is a {o.size} {o.colour} {o.shape} "
            f"{FILL_PHRASES[o.texture]}."
        )
    empty = g * g - n
    if empty:
        parts.append(f"The other {_number(empty)} cell{'s are' if empty != 1 else ' is'} empty.")
    return " ".join(parts)


def alt_text(scene: Scene, rng: np.random.Generator) -> str:
    """A short, partial, web-style text: names one or two objects (never all of a 3+ object scene), with one
    detail of the first (size, fill or the background), so that alt texts rarely repeat across scenes."""
    picks = rng.choice(len(scene.objects), size=min(2, len(scene.objects)), replace=False)
    first, second = scene.objects[picks[0]], scene.objects[picks[-1]]
    templates = (
        f"{first.size} {first.colour} {first.shape}",
        f"{first.colour} {first.shape} and {second.colour} {second.shape}",
        f"{first.colour} {first.shape} next to a {second.size} {second.colour} {second.shape}",
        f"{first.texture} {first.colour} {first.shape} on {scene.background}",
        f"{_number(len(scene.objects))} shapes with a {first.colour} {first.shape} and a {second.colour} "
        f"{second.shape}",
    )
    return templates[int(rng.integers(len(templates)))]


def _shape_outline(shape: str, box: tuple[float, float, float, float]):
    """Polygon points (or None for the circle, drawn as an ellipse) filling `box`."""
    x0, y0, x1, y1 = box
    cx, cy, r = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2
    if shape in ("circle", "square"):
        return None
    if shape == "triangle":
        return [(cx, y0), (x1, y1), (x0, y1)]
    if shape == "diamond":
        return [(cx, y0), (x1, cy), (cx, y1), (x0, cy)]
    if shape == "star":
        angles = np.pi / 2 + np.arange(10) * np.pi / 5
        radii = np.where(np.arange(10) % 2 == 0, r, 0.45 * r)
        return [(cx + rad * np.cos(a), cy - rad * np.sin(a)) for a, rad in zip(angles, radii)]
    if shape == "cross":
        t = r / 3
        return [
            (cx - t, y0), (cx + t, y0), (cx + t, cy - t), (x1, cy - t), (x1, cy + t), (cx + t, cy + t),
            (cx + t, y1), (cx - t, y1), (cx - t, cy + t), (x0, cy + t), (x0, cy - t), (cx - t, cy - t),
        ]
    raise ValueError(f"unknown shape {shape!r}")


def _shape_mask(size: int, obj: ToyObject, box, line_width: int) -> np.ndarray:
    mask = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(mask)
    outline_only = obj.texture == "outlined"
    fill, outline, width = (None, 255, line_width) if outline_only else (255, None, 0)
    points = _shape_outline(obj.shape, box)
    if obj.shape == "circle":
        draw.ellipse(box, fill=fill, outline=outline, width=width)
    elif obj.shape == "square":
        draw.rectangle(box, fill=fill, outline=outline, width=width)
    else:
        draw.polygon(points, fill=fill, outline=outline, width=width)
    return np.asarray(mask) > 0


def render(scene: Scene, size: int, rng: np.random.Generator) -> Image.Image:
    """Draw the scene; positions jitter by a few pixels inside their cell (seeded)."""
    canvas = np.empty((size, size, 3), dtype=np.uint8)
    canvas[:] = BACKGROUNDS[scene.background]
    cell = size / scene.grid
    yy, xx = np.mgrid[0:size, 0:size]
    stripes = ((xx + yy) // max(2, size // 32)) % 2 == 0
    line_width = max(1, size // 48)
    for obj in scene.objects:
        extent = cell * SIZES[obj.size] * 0.9
        jitter = rng.uniform(-1, 1, size=2) * (cell - extent) / 2
        cx = (obj.col + 0.5) * cell + jitter[0]
        cy = (obj.row + 0.5) * cell + jitter[1]
        box = (cx - extent / 2, cy - extent / 2, cx + extent / 2, cy + extent / 2)
        mask = _shape_mask(size, obj, box, line_width)
        if obj.texture == "striped":
            mask &= stripes
        canvas[mask] = COLOURS[obj.colour]
    return Image.fromarray(canvas, "RGB")


@dataclass(frozen=True)
class ToyRecord:
    uid: str
    image: Image.Image
    alt_text: str
    long_description: str
    scene_json: str


def make_record(seed: int, index: int, image_size: int, grid: int, min_objects: int, max_objects: int,
                textures: bool) -> ToyRecord:
    """Scene `index` of the world `seed`: image, alt text, long description (pure function of its arguments)."""
    return scene_record(sample_scene(seed, index, grid, min_objects, max_objects, textures), seed, index, image_size)


def scene_record(scene: Scene, seed: int, index: int, image_size: int, draw_key: int | None = None) -> ToyRecord:
    """The record of a given scene as scene `index` of world `seed`. Its jitter and alt text are drawn from
    (seed, draw_key, 1), draw_key defaulting to index: two scenes rendered with one key differ only where they do."""
    rng = np.random.default_rng([seed, index if draw_key is None else draw_key, 1])
    return ToyRecord(
        uid=f"toy{seed:04d}{index:07d}",
        image=render(scene, image_size, rng),
        alt_text=alt_text(scene, rng),
        long_description=long_description(scene),
        scene_json=scene.to_json(),
    )


def twin_scene(scene: Scene, rng: np.random.Generator) -> Scene:
    """The scene with its last-described object changed in colour or in shape. The two long descriptions agree
    up to that object's sentence, so only a reader of the description's end can tell the two images apart."""
    last = scene.objects[-1]
    if rng.random() < 0.5:
        changed = replace(last, colour=str(rng.choice([c for c in COLOURS if c != last.colour])))
    else:
        changed = replace(last, shape=str(rng.choice([s for s in SHAPES if s != last.shape])))
    return replace(scene, objects=scene.objects[:-1] + (changed,))


def layout_twin_scene(scene: Scene, rng: np.random.Generator) -> Scene:
    """The scene with two of its objects swapped between their cells, each keeping its colour, shape, size and
    fill. Both images hold the same objects, so only binding each object to its place tells them apart. The two
    differ in colour or shape, so the images differ."""
    objects = scene.objects
    pairs = [(i, j) for i in range(len(objects)) for j in range(i + 1, len(objects))
             if (objects[i].colour, objects[i].shape) != (objects[j].colour, objects[j].shape)]
    if not pairs:
        raise ValueError("no two objects of the scene differ in colour or shape")
    i, j = pairs[int(rng.integers(len(pairs)))]
    moved = list(objects)
    moved[i] = replace(objects[i], row=objects[j].row, col=objects[j].col)
    moved[j] = replace(objects[j], row=objects[i].row, col=objects[i].col)
    return replace(scene, objects=tuple(sorted(moved, key=lambda o: (o.row, o.col))))


def write_png(image: Image.Image, path: Path) -> None:
    """PNG without metadata chunks, so equal images give equal bytes."""
    image.save(path, format="PNG", optimize=False, compress_level=6)


def generate(params: ToyWorldParams, image_dir: Path) -> pd.DataFrame:
    """Render `params.num_images` scenes into image_dir; one row per image with a repo-relative file: URL."""
    image_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for index in tqdm(range(params.num_images), desc="toyworld", unit="img"):
        record = make_record(params.seed, index, params.image_size, params.grid, params.min_objects,
                             params.max_objects, params.textures)
        path = image_dir / f"{record.uid}.png"
        write_png(record.image, path)
        rows.append({"url": f"file:{path.as_posix()}", "uid": record.uid, "alt_text": record.alt_text,
                     "long_description": record.long_description, "scene": record.scene_json})
    return pd.DataFrame(rows)
