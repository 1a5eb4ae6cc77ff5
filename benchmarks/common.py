"""Shared helpers for benchmarks: realistic-size JPEG folders and interleaved timing."""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter


def write_photo_like_jpegs(root: Path, classes: int = 3, per_class: int = 100, size=(500, 375), seed: int = 0) -> Path:
    """JPEGs of photo-like size and file size (smooth gradients, shapes, texture; ~30-60 KB at q=90)."""
    root = Path(root)
    done = root / ".complete"
    if done.exists():
        return root
    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    for c in range(classes):
        folder = root / f"class_{c}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            a, b = rng.uniform(-1, 1, size=(2, 3))
            base = rng.uniform(40, 200, size=3)
            img = base + a * (xx[..., None] / w * 60) + b * (yy[..., None] / h * 60)
            img += rng.normal(0, 12, size=(h, w, 3))
            im = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
            draw = ImageDraw.Draw(im)
            for _ in range(6):
                x0, y0 = rng.uniform(0, w), rng.uniform(0, h)
                r = rng.uniform(15, 90)
                draw.ellipse((x0 - r, y0 - r, x0 + r, y0 + r), fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
            im = im.filter(ImageFilter.GaussianBlur(1.2))
            im.save(folder / f"img_{i:04d}.jpg", "JPEG", quality=90)
    done.write_text("ok\n")
    return root


class Timings(dict):
    """Median seconds per candidate (the dict), with every repeat's seconds in `runs`."""

    def __init__(self, runs: dict[str, list[float]]):
        super().__init__({name: statistics.median(t) for name, t in runs.items()})
        self.runs = runs

    def ratio(self, a: str, b: str) -> dict[str, float]:
        """min/median/max over repeats of seconds(a) / seconds(b), paired repeat by repeat."""
        return spread([x / y for x, y in zip(self.runs[a], self.runs[b], strict=True)])


def spread(values) -> dict[str, float]:
    values = list(values)
    return {"min": min(values), "median": statistics.median(values), "max": max(values), "n": len(values)}


def interleaved(candidates: dict, repeats: int = 3) -> Timings:
    """Seconds per candidate over `repeats` runs in turn, so machine noise hits all alike."""
    times: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(repeats):
        for name, fn in candidates.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return Timings(times)
