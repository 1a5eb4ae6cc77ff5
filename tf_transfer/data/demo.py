"""A small generated image dataset: the offline default for the main job, and test fixtures.

Each class is a shape (circle, square, triangle, ...) of random colour, size and position on a
noisy random background, so a classifier has to learn shape, not colour.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from tf_transfer import folders

log = logging.getLogger(__name__)

SHAPES = ("circle", "square", "triangle", "cross", "ring")
DEMO_NAME = "demo"
DEMO_CLASSES = ("circle", "square", "triangle")
DEMO_PER_CLASS = 60
DEMO_SIZE = 128


def draw_shape(shape: str, size: int, rng: np.random.Generator) -> Image.Image:
    """One RGB image of `shape` on a noisy background."""
    background = rng.integers(0, 256, size=3)
    noise = rng.normal(0, 18, size=(size, size, 3))
    pixels = np.clip(background + noise, 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels)
    draw = ImageDraw.Draw(image)
    colour = tuple(int(c) for c in (background + rng.integers(80, 176, size=3)) % 256)
    r = rng.uniform(0.18, 0.34) * size
    cx, cy = rng.uniform(r, size - r, size=2)
    box = (cx - r, cy - r, cx + r, cy + r)
    width = max(2, int(r / 3))
    if shape == "circle":
        draw.ellipse(box, fill=colour)
    elif shape == "square":
        draw.rectangle(box, fill=colour)
    elif shape == "triangle":
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=colour)
    elif shape == "cross":
        draw.line([(cx - r, cy), (cx + r, cy)], fill=colour, width=width)
        draw.line([(cx, cy - r), (cx, cy + r)], fill=colour, width=width)
    elif shape == "ring":
        draw.ellipse(box, outline=colour, width=width)
    else:
        raise ValueError(f"unknown shape {shape!r}; expected one of {', '.join(SHAPES)}")
    return image


def write_shapes(
    root: str | Path,
    classes: tuple[str, ...] = DEMO_CLASSES,
    per_class: int | dict[str, int] = DEMO_PER_CLASS,
    size: int = DEMO_SIZE,
    seed: int = 0,
    fmt: str = "JPEG",
) -> Path:
    """Write root/<class>/<class>_<i>.<ext> images; returns root. Deterministic for a seed."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    ext = {"JPEG": "jpg", "PNG": "png", "BMP": "bmp", "GIF": "gif"}[fmt]
    for shape in classes:
        count = per_class[shape] if isinstance(per_class, dict) else per_class
        folder = root / shape
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(count):
            draw_shape(shape, size, rng).save(folder / f"{shape}_{i:04d}.{ext}", fmt)
    return root


def ensure_demo_dataset() -> Path:
    """The demo dataset folder, generated on first use into the cache folder."""
    root = folders.cache_home() / "datasets" / f"shapes-v1-{len(DEMO_CLASSES)}x{DEMO_PER_CLASS}-{DEMO_SIZE}px"
    done = root / ".complete"
    if not done.exists():
        log.info("Generating the demo dataset (%d classes x %d images) in %s", len(DEMO_CLASSES), DEMO_PER_CLASS, root)
        write_shapes(root)
        done.write_text("ok\n")
    return root


COLOURS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (50, 70, 220)}


def write_multitask(root: str | Path, count: int = 150, size: int = 64, seed: int = 0,
                    unlabelled: float = 0.2) -> Path:
    """Generated images with three tasks, and their manifest root/manifest.csv (path,shape,colour,tags):
    `shape` (circle, square, triangle) and `colour` (red, green, blue) are single-label; `tags` is
    multi-label (dark or light background, 'noisy' for a grainy one, 'large' for big shapes). A share `unlabelled` of
    the rows has no colour label (an empty cell). Deterministic for a seed; returns the CSV's path."""
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    shapes, colours = DEMO_CLASSES, tuple(COLOURS)
    rows = [["path", "shape", "colour", "tags"]]
    for i in range(count):
        shape, colour = shapes[i % len(shapes)], colours[(i // len(shapes)) % len(colours)]
        dark, noisy = rng.random() < 0.5, rng.random() < 0.5
        pixels = np.clip(rng.normal(70 if dark else 190, 30 if noisy else 4, size=(size, size, 3)), 0, 255)
        pixels = pixels.astype(np.uint8)
        image = Image.fromarray(pixels)
        r = rng.uniform(0.15, 0.35) * size
        cx, cy = rng.uniform(r, size - r, size=2)
        fill = tuple(int(c) for c in np.clip(np.array(COLOURS[colour]) + rng.integers(-25, 26, 3), 0, 255))
        draw = ImageDraw.Draw(image)
        if shape == "circle":
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
        elif shape == "square":
            draw.rectangle((cx - r, cy - r, cx + r, cy + r), fill=fill)
        else:
            draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
        name = f"images/{i:04d}.png"
        image.save(root / name)
        tags = ["dark" if dark else "light"] + ["noisy"] * noisy + ["large"] * (r > 0.25 * size)
        rows.append([name, shape, "" if rng.random() < unlabelled else colour, "|".join(tags)])
    return folders.write_csv(root / "manifest.csv", rows)


TEXT_WORDS = {
    "positive": ("good", "great", "happy", "love", "wonderful", "fun", "best", "enjoyed"),
    "negative": ("bad", "awful", "sad", "hate", "boring", "worst", "terrible", "dull"),
    "neutral": ("okay", "average", "plain", "fine", "usual", "normal", "standard", "ordinary"),
}
FILLER = ("the", "movie", "was", "a", "it", "this", "film", "story", "and", "really", "very", "so")


def write_texts(root: str | Path, per_class: int = 40, seed: int = 0, classes: tuple[str, ...] = tuple(TEXT_WORDS)
                ) -> Path:
    """A small generated text set: root/reviews.csv (text,label) whose classes differ by their words, and
    the same texts as root/folder/{train,test}/<class>/<n>.txt (the aclImdb layout). Returns root."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    rows = [["text", "label"]]
    for label in classes:
        for i in range(per_class):
            words = list(rng.choice(FILLER, rng.integers(3, 12))) + list(rng.choice(TEXT_WORDS[label], 2))
            rng.shuffle(words)
            text = " ".join(words).capitalize() + rng.choice([".", "!", "..."])
            rows.append([text, label])
            folder = root / "folder" / ("test" if i % 5 == 0 else "train") / label
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{i:04d}.txt").write_text(text, encoding="utf-8")
    folders.write_csv(root / "reviews.csv", rows)
    return root


def text_vocab() -> list[str]:
    """The WordPiece vocabulary of the generated texts (special tokens first)."""
    words = sorted({w for ws in TEXT_WORDS.values() for w in ws} | set(FILLER))
    return ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", "!", ",", "##s", *words]
