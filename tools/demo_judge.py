#!/usr/bin/env python3
"""Judge prompt following of the demo model by the world's own geometry.

For an image whose caption is `a <colour> <shape>` (tools/demo_world.py), the judge
  * takes the background colour as the median of the image's 4-pixel border,
  * marks as object every pixel farther than 50 (RGB distance) from it and keeps the
    largest connected region,
  * names the object's colour as the palette colour nearest to the median of the
    region's inner pixels (one erosion, away from anti-aliased edges),
  * names its shape by how much of its bounding box it fills: a square fills all of
    it, a circle pi/4 = 0.785, the world's apex-up triangle 1/2 (thresholds halfway:
    above 0.89 a square, below 0.64 a triangle, a circle between).
An image with no region of at least 64 pixels is wrong on both counts.

  --self-check N      judge N held-out scenes rendered by the world itself (seed 2):
                      how far the judge can be trusted (expected: all right)
  --manifest CSV      judge the images a tomex store lists (results/manifest.csv)
    --spec NAME       only this spec's rows
                      (of the model version that made its newest image: tools/store_rows.py)
    --out FILE.md     also write the table

Usage:
  tools/.venv/bin/python tools/demo_judge.py --self-check 500
  tools/.venv/bin/python tools/demo_judge.py --manifest results/manifest.csv --spec demo_prompts
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parent))
import demo_world  # noqa: E402
import store_rows  # noqa: E402

CAPTION = re.compile(r"^a (\w+) (\w+)$")
OBJECT_DISTANCE = 50.0
MIN_PIXELS = 64


def largest_object(img: np.ndarray) -> np.ndarray | None:
    """Mask of the largest region that differs from the border's median colour, or None."""
    border = np.concatenate([img[:4].reshape(-1, 3), img[-4:].reshape(-1, 3), img[:, :4].reshape(-1, 3), img[:, -4:].reshape(-1, 3)])
    background = np.median(border, axis=0)
    mask = np.linalg.norm(img - background, axis=2) > OBJECT_DISTANCE
    labels, count = ndimage.label(mask)
    if count == 0:
        return None
    sizes = ndimage.sum(mask, labels, index=range(1, count + 1))
    region = labels == (int(np.argmax(sizes)) + 1)
    return region if int(region.sum()) >= MIN_PIXELS else None


def measure(image: np.ndarray) -> tuple[str | None, str | None, float]:
    """(colour, shape, fill of its bounding box) of the largest object of an RGB uint8
    image, or (None, None, 0.0) without one."""
    img = image.astype(np.float32)
    region = largest_object(img)
    if region is None:
        return None, None, 0.0
    inner = ndimage.binary_erosion(region)
    pixels = img[inner] if inner.sum() >= 16 else img[region]
    rgb = np.median(pixels, axis=0)
    colour = min(demo_world.COLOURS, key=lambda c: float(np.linalg.norm(rgb - np.array(demo_world.COLOURS[c]))))
    ys, xs = np.nonzero(region)
    fill = float(region.sum()) / float((ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1))
    shape = "square" if fill > 0.89 else "triangle" if fill < 0.64 else "circle"
    return colour, shape, fill


def judge(image: np.ndarray) -> tuple[str | None, str | None]:
    """(colour, shape) of the largest object of an RGB uint8 image, or (None, None)."""
    return measure(image)[:2]


def expected(caption: str) -> tuple[str, str] | None:
    m = CAPTION.match(caption.strip())
    if not m or m.group(1) not in demo_world.COLOURS or m.group(2) not in demo_world.SHAPES:
        return None
    return m.group(1), m.group(2)


def self_check(n: int) -> None:
    colour_ok = shape_ok = 0
    for i in range(n):
        s = demo_world.single_caption_scene(2, i)
        c, sh = judge(demo_world.render(s))
        colour_ok += c == s.objects[0].colour
        shape_ok += sh == s.objects[0].shape
        if c != s.objects[0].colour or sh != s.objects[0].shape:
            print(f"  scene {i}: {s.caption!r} judged {c} {sh}")
    print(f"judge on {n} world scenes (seed 2): colour {colour_ok / n:.1%}, shape {shape_ok / n:.1%}")


def judge_manifest(path: Path, spec: str | None, out: Path | None) -> None:
    root = path.parent
    cells = defaultdict(lambda: [0, 0, 0])  # (config, r) -> images, colour right, shape right
    seen = set()
    for row in store_rows.latest_model_rows(path, spec):
        want = expected(row["prompt"])
        if want is None:
            continue
        cell = (row["config"], float(row["r"]))
        if (cell, row["key"]) in seen:
            continue
        seen.add((cell, row["key"]))
        image = np.asarray(Image.open(root / row["image"]).convert("RGB"))
        colour, shape = judge(image)
        stats = cells[cell]
        stats[0] += 1
        stats[1] += colour == want[0]
        stats[2] += shape == want[1]
    if not cells:
        sys.exit(f"{path}: no rows of spec {spec!r} with a caption `a <colour> <shape>`")
    lines = ["| config | r | images | colour right | shape right |", "|---|---|---|---|---|"]
    for (config, r), (n, c, s) in sorted(cells.items(), key=lambda kv: (kv[0][0], kv[0][1])):
        lines.append(f"| {config} | {r:g} | {n} | {c / n:.1%} ({c}) | {s / n:.1%} ({s}) |")
    table = "\n".join(lines)
    print(table)
    if out:
        out.write_text(table + "\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--self-check", type=int, default=0)
    ap.add_argument("--manifest", type=Path)
    ap.add_argument("--spec")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    if args.self_check:
        self_check(args.self_check)
    if args.manifest:
        judge_manifest(args.manifest, args.spec, args.out)
    if not args.self_check and not args.manifest:
        ap.error("nothing to do: give --self-check N or --manifest CSV")


if __name__ == "__main__":
    main()
