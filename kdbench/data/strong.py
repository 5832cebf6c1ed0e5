"""MLKD's strong view: an independent crop + flip, FixMatch-style RandAugment(n=2), then Cutout.

specs/methods-seed.md §2.3: two ops drawn uniformly *with replacement* from 14, each magnitude
drawn uniformly in its range; then always a square Cutout of side U(0, 0.5)·width, centre
uniform, clipped to the image, filled with RGB (125, 123, 114). PIL operations, before
normalisation. All randomness comes from a generator seeded by (seed, epoch, sample index), so a
strong view is the same whatever the number of workers, and a resumed epoch replays it exactly.
Geometric ops fill uncovered pixels with black (PIL's default; the reference passes no fill).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageOps

from kdbench.data.augment import crop_and_flip

CUTOUT_FILL = (125, 123, 114)
STRONG_STREAM = 1  # keeps the strong view's draws apart from any other per-sample stream

Op = Callable[[Image.Image, float], Image.Image]


def _affine(image: Image.Image, coeffs: tuple[float, ...]) -> Image.Image:
    return image.transform(image.size, Image.Transform.AFFINE, coeffs)


# (operation, low, high): the magnitude is drawn uniformly in [low, high].
OPS: tuple[tuple[str, Op, float, float], ...] = (
    ("AutoContrast", lambda im, v: ImageOps.autocontrast(im), 0, 1),
    ("Brightness", lambda im, v: ImageEnhance.Brightness(im).enhance(v), 0.05, 0.95),
    ("Color", lambda im, v: ImageEnhance.Color(im).enhance(v), 0.05, 0.95),
    ("Contrast", lambda im, v: ImageEnhance.Contrast(im).enhance(v), 0.05, 0.95),
    ("Equalize", lambda im, v: ImageOps.equalize(im), 0, 1),
    ("Identity", lambda im, v: im, 0, 1),
    ("Posterize", lambda im, v: ImageOps.posterize(im, int(v)), 4, 8),
    ("Rotate", lambda im, v: im.rotate(v), -30, 30),
    ("Sharpness", lambda im, v: ImageEnhance.Sharpness(im).enhance(v), 0.05, 0.95),
    ("ShearX", lambda im, v: _affine(im, (1, v, 0, 0, 1, 0)), -0.3, 0.3),
    ("ShearY", lambda im, v: _affine(im, (1, 0, 0, v, 1, 0)), -0.3, 0.3),
    ("Solarize", lambda im, v: ImageOps.solarize(im, int(v)), 0, 256),
    ("TranslateX", lambda im, v: _affine(im, (1, 0, v * im.size[0], 0, 1, 0)), -0.3, 0.3),
    ("TranslateY", lambda im, v: _affine(im, (1, 0, 0, 0, 1, v * im.size[1])), -0.3, 0.3),
)


def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, epoch, index, STRONG_STREAM]))


def _magnitude(rng: np.random.Generator, name: str, low: float, high: float) -> float:
    if name == "Posterize":
        return float(rng.integers(int(low), int(high) + 1))
    return float(rng.uniform(low, high))


def cutout(image: Image.Image, rng: np.random.Generator, max_fraction: float = 0.5) -> Image.Image:
    """Square of side U(0, max_fraction)·width, centred uniformly, clipped, filled with CUTOUT_FILL."""
    width, height = image.size
    side = rng.uniform(0, max_fraction) * width
    cx, cy = rng.uniform(0, width), rng.uniform(0, height)
    x0, y0 = int(max(0, cx - side / 2)), int(max(0, cy - side / 2))
    x1, y1 = int(min(width, x0 + side)), int(min(height, y0 + side))
    image = image.copy()
    ImageDraw.Draw(image).rectangle((x0, y0, x1, y1), fill=CUTOUT_FILL)
    return image


def strong_view(image: np.ndarray, rng: np.random.Generator, padding: int = 4, num_ops: int = 2) -> np.ndarray:
    """One (H,W,3) uint8 image → its strong view (H,W,3) uint8."""
    dx, dy = (int(v) for v in rng.integers(0, 2 * padding + 1, size=2))
    flip = bool(rng.integers(0, 2))
    pil = Image.fromarray(np.ascontiguousarray(crop_and_flip(image, dx, dy, flip, padding)))
    for choice in rng.integers(0, len(OPS), size=num_ops):
        name, op, low, high = OPS[int(choice)]
        pil = op(pil, _magnitude(rng, name, low, high))
    return np.array(cutout(pil, rng))  # a writable copy
