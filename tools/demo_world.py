#!/usr/bin/env python3
"""The demo model's world: procedural captioned scenes, deterministic from a seed.

A scene is a flat background with one to three flat objects; each object has a colour,
a shape, a size class and a position. Its caption is generated from the scene by the
grammar below (README.md, "The demo model" repeats it):

    caption     := single | pair | triple
    single      := object [" " place] [background]
    pair        := object " " relation " " object [background]
    triple      := object ", " object " and " object [background]   (left to right)
    object      := "a " [size " "] colour " " shape
    size        := "small" | "large"
    colour      := "red" | "green" | "blue" | "yellow" | "purple"
    shape       := "circle" | "square" | "triangle"
    place       := "on the left" | "on the right" | "at the top" | "at the bottom"
                 | "in the center"
    relation    := "left of" | "right of" | "above" | "below" | "and"
    background  := " on a " ("white" | "gray" | "black") " background"

Bracketed parts are optional; an attribute the caption leaves out is still drawn at
random in the image, so a short caption like "a red circle" stands for every scene it
describes. Scene `i` of seed `s` is always the same image and caption
(`numpy.random.default_rng([s, i])`), so training, held-out and judging sets are named
by their seed and index range alone.

Usage as a module: `scene(seed, index)` -> Scene; `render(scene)` -> uint8 [256, 256, 3].
Run directly to write a contact sheet of the first scenes (a look at the world):
  tools/.venv/bin/python tools/demo_world.py --seed 0 --count 16 --out world.png
or the prompt files of the demo specs (captions of held-out seeds; training uses seed 1):
  tools/.venv/bin/python tools/demo_world.py --seed 3 --count 64 --prompts specs/prompts/demo.csv
  tools/.venv/bin/python tools/demo_world.py --probe 5 --prompts specs/prompts/demo_probe.csv
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

SIZE = 256
SUPERSAMPLE = 4  # drawn at 4x and box-filtered down: anti-aliased edges

COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 225),
    "yellow": (240, 210, 40),
    "purple": (145, 60, 185),
}
SHAPES = ("circle", "square", "triangle")
BACKGROUNDS = {
    "white": (245, 245, 245),
    "gray": (128, 128, 128),
    "black": (20, 20, 20),
}
# Half-extent (pixels at 256) of each size class.
SIZE_RANGES = {"small": (18, 28), "large": (36, 52)}
PLACES = {
    # place -> (x range, y range) of the object's centre, as fractions of the canvas
    "on the left": ((0.22, 0.32), (0.3, 0.7)),
    "on the right": ((0.68, 0.78), (0.3, 0.7)),
    "at the top": ((0.3, 0.7), (0.22, 0.32)),
    "at the bottom": ((0.3, 0.7), (0.68, 0.78)),
    "in the center": ((0.45, 0.55), (0.45, 0.55)),
}
# Colour jitter per channel (uniform +-): the world is not a palette of eight pixels.
JITTER = 12


@dataclass
class Obj:
    colour: str
    shape: str
    size: str
    half: float  # half-extent in pixels
    x: float  # centre, pixels
    y: float
    rgb: tuple


@dataclass
class Scene:
    background: str
    background_rgb: tuple
    objects: list
    caption: str


def _jitter(rng, rgb):
    return tuple(int(np.clip(c + rng.integers(-JITTER, JITTER + 1), 0, 255)) for c in rgb)


def _object(rng, size=None):
    colour = str(rng.choice(list(COLOURS)))
    shape = str(rng.choice(SHAPES))
    size = size or str(rng.choice(list(SIZE_RANGES)))
    lo, hi = SIZE_RANGES[size]
    return Obj(colour, shape, size, float(rng.uniform(lo, hi)), 0.0, 0.0, _jitter(rng, COLOURS[colour]))


def _phrase(rng, obj, size_p):
    size = f"{obj.size} " if rng.random() < size_p else ""
    return f"a {size}{obj.colour} {obj.shape}"


def _clamp(v, half):
    margin = half + 6
    return float(np.clip(v, margin, SIZE - margin))


def scene(seed: int, index: int) -> Scene:
    """Scene `index` of the world drawn with `seed`."""
    rng = np.random.default_rng([seed, index])
    background = str(rng.choice(list(BACKGROUNDS)))
    count = int(rng.choice([1, 2, 3], p=[0.6, 0.28, 0.12]))
    if count == 1:
        obj = _object(rng)
        place = str(rng.choice(list(PLACES)))
        (x0, x1), (y0, y1) = PLACES[place]
        if rng.random() < 0.4:
            obj.x, obj.y = rng.uniform(x0, x1) * SIZE, rng.uniform(y0, y1) * SIZE
            text = f"{_phrase(rng, obj, 0.4)} {place}"
        else:  # position left unsaid: anywhere on the canvas
            obj.x, obj.y = rng.uniform(0.2, 0.8) * SIZE, rng.uniform(0.2, 0.8) * SIZE
            text = _phrase(rng, obj, 0.4)
        obj.x, obj.y = _clamp(obj.x, obj.half), _clamp(obj.y, obj.half)
        objects = [obj]
    elif count == 2:
        a, b = _object(rng, "small"), _object(rng, "small")
        horizontal = rng.random() < 0.5
        first_before = rng.random() < 0.5  # a is left of / above b
        lo, hi = (0.27, 0.73) if first_before else (0.73, 0.27)
        across = rng.uniform(0.35, 0.65) * SIZE
        jitter = rng.uniform(-0.05, 0.05, size=2) * SIZE
        if horizontal:
            a.x, a.y = lo * SIZE + jitter[0], across
            b.x, b.y = hi * SIZE + jitter[1], across + rng.uniform(-0.08, 0.08) * SIZE
            relation = "left of" if first_before else "right of"
        else:
            a.x, a.y = across, lo * SIZE + jitter[0]
            b.x, b.y = across + rng.uniform(-0.08, 0.08) * SIZE, hi * SIZE + jitter[1]
            relation = "above" if first_before else "below"
        if rng.random() < 0.25:
            relation = "and"
        for o in (a, b):
            o.x, o.y = _clamp(o.x, o.half), _clamp(o.y, o.half)
        objects = [a, b]
        text = f"{_phrase(rng, a, 0.2)} {relation} {_phrase(rng, b, 0.2)}"
    else:
        objects = [_object(rng, "small") for _ in range(3)]
        for i, o in enumerate(objects):
            o.x = _clamp((0.2 + 0.3 * i + rng.uniform(-0.03, 0.03)) * SIZE, o.half)
            o.y = _clamp(rng.uniform(0.3, 0.7) * SIZE, o.half)
        p = [_phrase(rng, o, 0.0) for o in objects]
        text = f"{p[0]}, {p[1]} and {p[2]}"
    if rng.random() < 0.5:
        text += f" on a {background} background"
    return Scene(background, _jitter(rng, BACKGROUNDS[background]), objects, text)


def draw_object(draw: ImageDraw.ImageDraw, shape: str, x: float, y: float, half: float, fill) -> None:
    """One object on `draw`: `shape` filling its box [x - half, x + half] x [y - half, y + half]
    (the triangle apex up). The one place the world's geometry is drawn: render, and
    tools/train_demo.py's shape maps, use it."""
    if shape == "circle":
        draw.ellipse([x - half, y - half, x + half, y + half], fill=fill)
    elif shape == "square":
        draw.rectangle([x - half, y - half, x + half, y + half], fill=fill)
    else:  # triangle, apex up, same bounding box as the square
        draw.polygon([(x, y - half), (x + half, y + half), (x - half, y + half)], fill=fill)


def render(s: Scene) -> np.ndarray:
    """The scene as uint8 RGB [256, 256, 3]."""
    k = SUPERSAMPLE
    img = Image.new("RGB", (SIZE * k, SIZE * k), s.background_rgb)
    draw = ImageDraw.Draw(img)
    for o in s.objects:
        draw_object(draw, o.shape, o.x * k, o.y * k, o.half * k, o.rgb)
    img = img.resize((SIZE, SIZE), Image.BOX)
    return np.asarray(img, dtype=np.uint8)


def single_caption_scene(seed: int, index: int) -> Scene:
    """A held-out probe: one object, caption exactly `a <colour> <shape>`."""
    rng = np.random.default_rng([seed, index, 1])
    obj = _object(rng)
    obj.x = _clamp(rng.uniform(0.2, 0.8) * SIZE, obj.half)
    obj.y = _clamp(rng.uniform(0.2, 0.8) * SIZE, obj.half)
    background = str(rng.choice(list(BACKGROUNDS)))
    return Scene(background, _jitter(rng, BACKGROUNDS[background]), [obj], f"a {obj.colour} {obj.shape}")


def write_prompts(path: str, captions: list[str]) -> None:
    import csv

    with open(path, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["prompt"])
        w.writerows([c] for c in captions)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--count", type=int, default=16)
    ap.add_argument("--out", help="contact sheet PNG of the first --count scenes")
    ap.add_argument("--prompts", help="write the captions of the first --count scenes as a prompt CSV")
    ap.add_argument("--probe", type=int, default=0, help="with --prompts: every `a <colour> <shape>` N times")
    args = ap.parse_args()
    if args.prompts:
        if args.probe:
            captions = [f"a {c} {s}" for _ in range(args.probe) for c in COLOURS for s in SHAPES]
        else:
            captions = [scene(args.seed, i).caption for i in range(args.count)]
        write_prompts(args.prompts, captions)
        return
    if not args.out:
        ap.error("give --out (contact sheet) or --prompts (prompt CSV)")
    cols = 4
    rows = (args.count + cols - 1) // cols
    sheet = Image.new("RGB", (cols * SIZE, rows * SIZE), (255, 255, 255))
    for i in range(args.count):
        s = scene(args.seed, i)
        sheet.paste(Image.fromarray(render(s)), ((i % cols) * SIZE, (i // cols) * SIZE))
        print(f"{i:3d}  {s.caption}")
    sheet.save(args.out)


if __name__ == "__main__":
    main()
