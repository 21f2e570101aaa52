"""A labelled image set drawn with PIL for the image quickstart and the tests: shapes on varied backgrounds.

No download and nothing binary in the repository: `python -m tuneforge.data.shapes DIR` (or
`generate(DIR)`) draws the same images on every machine from a seed, in the ImageFolder layout
`DIR/train/LABEL/NNNN.png` and `DIR/test/LABEL/NNNN.png`.  Each image varies what a classifier must
learn to ignore: the shape's colour, size, position and rotation, and the background (a plain colour,
a two-colour gradient, or noise), with distractor lines; only the outline of the shape tells the class.
"""

from __future__ import annotations

import argparse
import math
import random
from pathlib import Path

SHAPES = ("circle", "cross", "square", "star", "triangle")


def polygon(center: tuple[float, float], radius: float, corners: int, turn: float, inner: float | None = None):
    """Corner points of a regular polygon (with `inner`, a star: every other point at inner x radius)."""
    steps = corners * (2 if inner else 1)
    points = []
    for k in range(steps):
        r = radius * (inner if inner and k % 2 else 1.0)
        angle = turn + 2 * math.pi * k / steps
        points.append((center[0] + r * math.cos(angle), center[1] + r * math.sin(angle)))
    return points


def background(rng: random.Random, size: int):
    from PIL import Image

    kind = rng.choice(("plain", "gradient", "noise"))
    first = tuple(rng.randrange(256) for _ in range(3))
    if kind == "plain":
        return Image.new("RGB", (size, size), first)
    if kind == "noise":
        noise = Image.frombytes("L", (size, size), rng.randbytes(size * size)).convert("RGB")
        return Image.blend(Image.new("RGB", (size, size), first), noise, 0.5)
    second = tuple(rng.randrange(256) for _ in range(3))
    image = Image.new("RGB", (size, size))
    for y in range(size):
        t = y / (size - 1)
        image.paste(tuple(int(a + (b - a) * t) for a, b in zip(first, second)), (0, y, size, y + 1))
    return image


def draw(shape: str, rng: random.Random, size: int = 64):
    """One image of `shape` on a random background."""
    from PIL import ImageDraw

    image = background(rng, size)
    pen = ImageDraw.Draw(image)
    for _ in range(rng.randrange(3)):  # distractor lines, any colour
        pen.line([tuple(rng.uniform(0, size) for _ in range(2)) for _ in range(2)],
                 fill=tuple(rng.randrange(256) for _ in range(3)), width=1)
    radius = rng.uniform(0.18, 0.38) * size
    center = (rng.uniform(radius, size - radius), rng.uniform(radius, size - radius))
    color = tuple(rng.randrange(256) for _ in range(3))
    turn = rng.uniform(0, 2 * math.pi)
    x, y = center
    if shape == "circle":
        pen.ellipse((x - radius, y - radius, x + radius, y + radius), fill=color)
    elif shape == "square":
        pen.polygon(polygon(center, radius, 4, turn), fill=color)
    elif shape == "triangle":
        pen.polygon(polygon(center, radius, 3, turn), fill=color)
    elif shape == "star":
        pen.polygon(polygon(center, radius, 5, turn, inner=0.45), fill=color)
    else:  # cross: two bars
        for bar in (turn, turn + math.pi / 2):
            dx, dy = math.cos(bar) * radius, math.sin(bar) * radius
            pen.line((x - dx, y - dy, x + dx, y + dy), fill=color, width=max(3, int(radius / 2.5)))
    return image


def generate(directory: Path, train_per_class: int = 100, test_per_class: int = 20, size: int = 64,
             seed: int = 0, shapes: tuple[str, ...] = SHAPES) -> Path:
    """Write the image set (PNG) under `directory`; the same arguments give the same bytes."""
    for split, count in (("train", train_per_class), ("test", test_per_class)):
        for index, shape in enumerate(shapes):
            rng = random.Random(f"{seed}-{split}-{shape}")
            folder = directory / split / shape
            folder.mkdir(parents=True, exist_ok=True)
            for k in range(count):
                draw(shape, rng, size).save(folder / f"{index}{k:04d}.png", optimize=True)
    return directory


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tuneforge.data.shapes", description=__doc__.splitlines()[0])
    parser.add_argument("directory", type=Path)
    parser.add_argument("--train-per-class", type=int, default=100)
    parser.add_argument("--test-per-class", type=int, default=20)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    generate(args.directory, args.train_per_class, args.test_per_class, args.size, args.seed)
    print(f"{len(SHAPES)} classes, {args.train_per_class} train and {args.test_per_class} test images each: {args.directory}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
