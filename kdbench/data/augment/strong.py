"""MLKD's strong view: an independent crop + flip, FixMatch-style RandAugment(n=2), then Cutout.

docs/references.md §MLKD: two ops drawn uniformly *with replacement* from 14, each magnitude
drawn uniformly in its range; then always a square Cutout of side U(0, 0.5)·width, centre
uniform, clipped to the image, filled with RGB (125, 123, 114). PIL operations, before
normalisation. All randomness comes from a generator seeded by (seed, epoch, sample index), so a
strong view is the same whatever the number of workers, and a resumed epoch replays it exactly.
Geometric ops fill uncovered pixels with black (PIL's default; the reference passes no fill).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageOps

from kdbench.data.augment.epoch_plan import crop_and_flip

CUTOUT_FILL = (125, 123, 114)
CUTOUT_MAX_FRACTION = 0.5
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


@dataclass(frozen=True)
class StrongDraw:
    """Every random decision of one strong view, in the order ``draw`` takes them from the generator."""

    dx: int
    dy: int
    flip: bool
    ops: tuple[int, ...]  # indices into OPS
    magnitudes: tuple[float, ...]
    cutout: tuple[float, float, float]  # side (pixels), centre x, centre y


def draw(
    rng: np.random.Generator, width: int, height: int, padding: int = 4, num_ops: int = 2
) -> StrongDraw:
    """Crop offsets, flip, ``num_ops`` ops and their magnitudes, then the Cutout square, from ``rng``."""
    dx, dy = (int(v) for v in rng.integers(0, 2 * padding + 1, size=2))
    flip = bool(rng.integers(0, 2))
    ops = tuple(int(c) for c in rng.integers(0, len(OPS), size=num_ops))
    magnitudes = tuple(_magnitude(rng, OPS[op][0], OPS[op][2], OPS[op][3]) for op in ops)
    side = rng.uniform(0, CUTOUT_MAX_FRACTION) * width
    return StrongDraw(
        dx, dy, flip, ops, magnitudes, (side, rng.uniform(0, width), rng.uniform(0, height))
    )


def cutout_box(
    side: float, cx: float, cy: float, width: int, height: int
) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) of the Cutout square, clipped; PIL fills it corners included."""
    x0, y0 = int(max(0, cx - side / 2)), int(max(0, cy - side / 2))
    return x0, y0, int(min(width, x0 + side)), int(min(height, y0 + side))


def _fill(image: Image.Image, box: tuple[int, int, int, int]) -> Image.Image:
    image = image.copy()
    ImageDraw.Draw(image).rectangle(box, fill=CUTOUT_FILL)
    return image


def apply(image: np.ndarray, decisions: StrongDraw, padding: int = 4) -> np.ndarray:
    """One (H,W,3) uint8 image → its strong view under ``decisions`` (per sample, PIL: the reference)."""
    pil = Image.fromarray(
        np.ascontiguousarray(
            crop_and_flip(image, decisions.dx, decisions.dy, decisions.flip, padding)
        )
    )
    for op, magnitude in zip(decisions.ops, decisions.magnitudes):
        pil = OPS[op][1](pil, magnitude)
    return np.array(_fill(pil, cutout_box(*decisions.cutout, *pil.size)))  # a writable copy


def strong_view(
    image: np.ndarray, rng: np.random.Generator, padding: int = 4, num_ops: int = 2
) -> np.ndarray:
    """One (H,W,3) uint8 image → its strong view (H,W,3) uint8."""
    height, width = image.shape[:2]
    return apply(image, draw(rng, width, height, padding, num_ops), padding)
