"""Generate the shapes image-caption set shipped here: 32x32 PNGs of one coloured shape on a light background, with
a caption naming its colour and shape ("A red circle."). Deterministic (seeded): running it again writes the same
files. 4 colours x 3 shapes; each image varies the shape's size and position and the background's shade.

    python examples/data/shapes/generate.py            # writes images/, train.jsonl (OpenAI parts), heldout.jsonl
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from PIL import Image, ImageDraw

HERE = Path(__file__).parent
COLOURS = {"red": (210, 40, 40), "green": (40, 150, 60), "blue": (40, 70, 210), "yellow": (225, 200, 30)}
SHAPES = ("circle", "square", "triangle")
PER_CLASS = {"train": 20, "heldout": 5}
SIZE = 32
QUESTION = "What is in the picture?"


def draw(colour: str, shape: str, rng: random.Random) -> Image.Image:
    shade = rng.randint(225, 255)
    image = Image.new("RGB", (SIZE, SIZE), (shade, shade, shade))
    pen = ImageDraw.Draw(image)
    side = rng.randint(14, 24)
    x, y = rng.randint(2, SIZE - side - 2), rng.randint(2, SIZE - side - 2)
    jitter = tuple(max(0, min(255, c + rng.randint(-20, 20))) for c in COLOURS[colour])
    if shape == "circle":
        pen.ellipse((x, y, x + side, y + side), fill=jitter)
    elif shape == "square":
        pen.rectangle((x, y, x + side, y + side), fill=jitter)
    else:
        pen.polygon([(x + side / 2, y), (x, y + side), (x + side, y + side)], fill=jitter)
    return image


def record(path: str, colour: str, shape: str) -> dict:
    return {"messages": [
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": path}},
                                     {"type": "text", "text": QUESTION}]},
        {"role": "assistant", "content": f"A {colour} {shape}."},
    ]}


def main() -> None:
    rng = random.Random(0)
    (HERE / "images").mkdir(exist_ok=True)
    for split, count in PER_CLASS.items():
        rows = []
        for colour in COLOURS:
            for shape in SHAPES:
                for k in range(count):
                    name = f"images/{split}-{colour}-{shape}-{k:02d}.png"
                    draw(colour, shape, rng).save(HERE / name, optimize=True)
                    rows.append(record(name, colour, shape))
        rng.shuffle(rows)
        (HERE / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


if __name__ == "__main__":
    main()
