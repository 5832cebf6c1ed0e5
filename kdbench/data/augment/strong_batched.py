"""MLKD's strong view for a whole batch with tensor ops on the loader's device (``data/augment/strong.py`` is the reference).

The random decisions are the reference's: each sample's ``StrongDraw`` comes from the same per-sample
generator ``sample_rng(seed, epoch, index)`` through the same ``strong.draw``, on the CPU (a few numbers
per image). The pixel work then runs batched on the device, on uint8 images, and replays PIL's own
arithmetic (Pillow 13):

* crop + flip: one gather from the zero-padded images, as the tensor loader's weak view;
* AutoContrast, Equalize, Posterize, Solarize: per-image, per-channel lookup tables built from the
  batch's histograms with PIL's integer/float64 formulas;
* Brightness, Color, Contrast, Sharpness: PIL's ``Image.blend`` in float32, ``in1 + α·(in2 − in1)``
  truncated to uint8, against the same degenerate image (black; the ITU-R 601 luma PIL computes as
  ``(19595 R + 38470 G + 7471 B + 2¹⁵) >> 16``; the rounded mean luma; the 3×3 SMOOTH filter with
  the border copied, computed in integers);
* Rotate, ShearX, ShearY: PIL's nearest-neighbour affine in 16.16 fixed point; TranslateX/Y: PIL's
  scale path, whose source indices accumulate in float64 (tabulated on the CPU, 32 per axis);
* Cutout: the same clipped square, corners included, filled with (125, 123, 114).

Every view is therefore equal to the reference's, pixel for pixel (tests/test_strong_view.py checks
each op and whole batches). The one assumption is that float32 multiply-then-add rounds as in the
Pillow build (no fused multiply-add), which holds for the x86-64 wheels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from kdbench.data.augment.strong import (
    CUTOUT_FILL,
    OPS,
    StrongDraw,
    cutout_box,
    draw,
    sample_rng,
)


def draws(
    seed: int, epoch: int, indices: Sequence[int], width: int, height: int, padding: int
) -> list[StrongDraw]:
    """The reference's decisions for samples ``indices`` of (seed, epoch)."""
    return [draw(sample_rng(seed, epoch, int(i)), width, height, padding) for i in indices]


def _luma(x: torch.Tensor) -> torch.Tensor:
    """PIL's RGB → L: (19595 R + 38470 G + 7471 B + 0x8000) >> 16, as int32 (n,1,H,W)."""
    x = x.to(torch.int32)
    return (x[:, 0:1] * 19595 + x[:, 1:2] * 38470 + x[:, 2:3] * 7471 + 0x8000) >> 16


def _blend(degenerate: torch.Tensor, image: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """PIL's ``Image.blend(degenerate, image, α)`` for 0 ≤ α ≤ 1: float32 ``in1 + α·(in2 − in1)``, truncated."""
    in1 = degenerate.to(torch.float32)
    diff = (image.to(torch.int32) - degenerate.to(torch.int32)).to(torch.float32)
    return (in1 + alpha.view(-1, 1, 1, 1) * diff).to(torch.uint8)


def _histograms(x: torch.Tensor) -> torch.Tensor:
    """int64 (n, C, 256) counts of each value per image and channel."""
    n, c = x.shape[:2]
    flat = x.reshape(n * c, -1).long()
    counts = torch.zeros(n * c, 256, dtype=torch.int64, device=x.device)
    counts.scatter_add_(1, flat, torch.ones_like(flat))
    return counts.view(n, c, 256)


def _apply_lut(x: torch.Tensor, lut: torch.Tensor) -> torch.Tensor:
    """x (n,C,H,W) uint8 through per-image, per-channel tables lut (n,C,256)."""
    n, c, h, w = x.shape
    return torch.gather(lut, 2, x.reshape(n, c, h * w).long()).reshape(n, c, h, w).to(torch.uint8)


def autocontrast(x: torch.Tensor, magnitudes: torch.Tensor) -> torch.Tensor:
    """ImageOps.autocontrast (cutoff 0): each channel's [lo, hi] stretched to [0, 255], int(ix·scale + offset)."""
    present = _histograms(x) > 0
    values = torch.arange(256, device=x.device)
    lo = torch.where(present, values, 256).amin(2, keepdim=True)
    hi = torch.where(present, values, -1).amax(2, keepdim=True)
    span = (hi - lo).clamp(min=1).double()
    scale = (
        torch.full_like(span, 255.0) / span
    )  # a true division, as Python's (a scalar numerator is a reciprocal)
    lut = torch.trunc(values.double() * scale + (-lo.double() * scale)).clamp(0, 255).long()
    return _apply_lut(x, torch.where(hi > lo, lut, values))


def equalize(x: torch.Tensor, magnitudes: torch.Tensor) -> torch.Tensor:
    """ImageOps.equalize: step = (count − count of the last used value) // 255; lut[i] = (step//2 + Σ_{j<i} h[j]) // step."""
    h = _histograms(x)
    values = torch.arange(256, device=x.device)
    last = torch.where(h > 0, values, -1).amax(2, keepdim=True)
    step = (h.sum(2, keepdim=True) - torch.gather(h, 2, last.clamp(min=0))) // 255
    before = torch.cumsum(h, 2) - h
    lut = ((step // 2 + before) // step.clamp(min=1)).clamp(
        max=255
    )  # Image.point clips the table to 255
    keep = ((h > 0).sum(2, keepdim=True) <= 1) | (step == 0)
    return _apply_lut(x, torch.where(keep, values, lut))


def posterize(x: torch.Tensor, magnitudes: torch.Tensor) -> torch.Tensor:
    """ImageOps.posterize: keep the top ``bits`` bits."""
    bits = magnitudes.long().view(-1, 1, 1, 1)
    mask = (255 - ((1 << (8 - bits)) - 1)).to(torch.uint8)
    return x & mask


def solarize(x: torch.Tensor, magnitudes: torch.Tensor) -> torch.Tensor:
    """ImageOps.solarize: invert the values at or above int(threshold)."""
    threshold = magnitudes.long().view(-1, 1, 1, 1)
    return torch.where(x.long() < threshold, x, 255 - x)


def brightness(x: torch.Tensor, magnitudes: torch.Tensor) -> torch.Tensor:
    return _blend(torch.zeros_like(x), x, magnitudes.float())


def color(x: torch.Tensor, magnitudes: torch.Tensor) -> torch.Tensor:
    return _blend(_luma(x).expand_as(x), x, magnitudes.float())


def contrast(x: torch.Tensor, magnitudes: torch.Tensor) -> torch.Tensor:
    """Blend with the mean luma, int(mean + 0.5), the mean taken in float64 as ImageStat does."""
    luma = _luma(x)
    mean = luma.sum((1, 2, 3)).double() / luma[0].numel()
    level = torch.floor(mean + 0.5).to(torch.int32).view(-1, 1, 1, 1)
    return _blend(level.expand_as(x), x, magnitudes.float())


def smooth(x: torch.Tensor) -> torch.Tensor:
    """ImageFilter.SMOOTH as PIL applies it: (Σ of the 3×3 neighbourhood + 4·centre) / 13, rounded (PIL rounds its
    filter sums; with a divisor of 13 no sum lies on a tie, so integer rounding is exact); the border is copied."""
    height, width = x.shape[2:]
    v = x.to(torch.int32)
    total = 4 * v[:, :, 1:-1, 1:-1]
    for dy in (0, 1, 2):
        for dx in (0, 1, 2):
            total = total + v[:, :, dy : height - 2 + dy, dx : width - 2 + dx]
    out = x.clone()
    out[:, :, 1:-1, 1:-1] = ((2 * total + 13) // 26).to(torch.uint8)
    return out


def sharpness(x: torch.Tensor, magnitudes: torch.Tensor) -> torch.Tensor:
    return _blend(smooth(x), x, magnitudes.float())


def _fixed(value: float) -> int:
    """PIL's 16.16 fixed point: floor(v·65536 + 0.5)."""
    return math.floor(value * 65536.0 + 0.5)


def affine_coefficients(coefficients: Sequence[Sequence[float]]) -> np.ndarray:
    """(n, 6) int64: PIL's fixed-point ``(A0, A1, A2, A3, A4, A5)`` of each affine matrix, the half-pixel offsets
    folded into A2 and A5 (computed on the host, as PIL does, in float64)."""
    return np.array(
        [
            [
                _fixed(a[0]),
                _fixed(a[1]),
                _fixed(a[2] + a[0] * 0.5 + a[1] * 0.5),
                _fixed(a[3]),
                _fixed(a[4]),
                _fixed(a[5] + a[3] * 0.5 + a[4] * 0.5),
            ]
            for a in coefficients
        ],
        dtype=np.int64,
    ).reshape(-1, 6)


def affine(x: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
    """PIL's nearest-neighbour ``transform(AFFINE)`` with a[1] or a[3] non-zero: the source pixel of output
    (x, y) is ((A2 + y·A1 + x·A0) >> 16, (A5 + y·A4 + x·A3) >> 16) in 16.16 fixed point; outside → 0.
    ``fixed``: (n, 6) int64 on x's device, from ``affine_coefficients``. The identity matrix maps every pixel to
    itself ((x·65536 + 32768) >> 16 = x), which is what PIL's rotate by 0° (a copy) gives."""
    height, width = x.shape[2:]
    cols = torch.arange(width, device=x.device).view(1, 1, -1)
    rows = torch.arange(height, device=x.device).view(1, -1, 1)
    a = [fixed[:, i].view(-1, 1, 1) for i in range(6)]
    src_x = (a[2] + rows * a[1] + cols * a[0]) >> 16
    src_y = (a[5] + rows * a[4] + cols * a[3]) >> 16
    return _gather(x, src_y, src_x)


def _gather(x: torch.Tensor, src_y: torch.Tensor, src_x: torch.Tensor) -> torch.Tensor:
    """out[b, :, y, x] = x[b, :, src_y, src_x] where the source lies inside the image, else 0."""
    n, c, height, width = x.shape
    inside = (src_x >= 0) & (src_x < width) & (src_y >= 0) & (src_y < height)
    flat = (
        (src_y.clamp(0, height - 1) * width + src_x.clamp(0, width - 1))
        .view(n, 1, -1)
        .expand(n, c, -1)
    )
    out = torch.gather(x.reshape(n, c, -1), 2, flat).view(n, c, height, width)
    return torch.where(inside[:, None], out, torch.zeros_like(out))


def _coord(v: float) -> int:
    """PIL's COORD: -1 below zero, else truncation."""
    return -1 if v < 0.0 else int(v)


def _scale_axis(start: float, step: float, count: int) -> list[int]:
    """PIL's scale path: the source index of each output position, from a float64 accumulator."""
    indices, position = [], start
    for _ in range(count):
        indices.append(_coord(position))
        position += step
    return indices


def translate_tables(shifts: Sequence[tuple[float, float]], width: int, height: int) -> np.ndarray:
    """(n, W + H) int64: the source column of each output column, then the source row of each output row, of
    PIL's ``transform(AFFINE, (1, 0, tx, 0, 1, ty))`` (its scale path): COORD(t + 0.5 + 1 + 1 …)."""
    return np.array(
        [
            _scale_axis(tx + 0.5, 1.0, width) + _scale_axis(ty + 0.5, 1.0, height)
            for tx, ty in shifts
        ],
        dtype=np.int64,
    ).reshape(-1, width + height)


def translate(x: torch.Tensor, tables: torch.Tensor) -> torch.Tensor:
    """Translation by source tables (n, W + H) int64 on x's device, from ``translate_tables``."""
    n, height, width = x.shape[0], x.shape[2], x.shape[3]
    src_x = tables[:, :width].view(n, 1, width).expand(n, height, width)
    src_y = tables[:, width:].view(n, height, 1).expand(n, height, width)
    return _gather(x, src_y, src_x)


def rotation(angle: float, width: int, height: int) -> tuple[float, ...]:
    """The inverse affine matrix of ``Image.rotate(angle)`` (centre, no expand), computed as PIL computes it;
    ``()`` where PIL takes a shortcut (0 → copy, 180 → transpose)."""
    angle = angle % 360.0
    if angle == 0:
        return ()
    if angle == 180 or (angle in (90, 270) and width == height):
        raise NotImplementedError(
            "rotations by multiples of 90° are PIL transposes; MLKD's range is ±30°"
        )
    cx, cy = width / 2, height / 2
    radians = -math.radians(angle)
    a, b, d, e = (
        round(math.cos(radians), 15),
        round(math.sin(radians), 15),
        round(-math.sin(radians), 15),
        round(math.cos(radians), 15),
    )
    return a, b, a * -cx + b * -cy + 0.0 + cx, d, e, d * -cx + e * -cy + 0.0 + cy


def op_parameters(name: str, magnitudes: Sequence[float], width: int, height: int) -> np.ndarray:
    """The numbers op ``name`` needs on the device, one row per image (computed on the host): the magnitude of a
    pixel op, the fixed-point matrix of Rotate/ShearX/ShearY, the source tables of TranslateX/Y."""
    if name == "Identity":
        return np.zeros((len(magnitudes), 0))
    if name in PIXEL_OPS:
        return np.asarray(magnitudes, dtype=np.float64).reshape(-1, 1)
    if name in ("TranslateX", "TranslateY"):
        shifts = [
            (v * width, 0.0) if name == "TranslateX" else (0.0, v * height) for v in magnitudes
        ]
        return translate_tables(shifts, width, height)
    if name == "Rotate":
        matrices = [
            rotation(v, width, height) or (1.0, 0.0, 0.0, 0.0, 1.0, 0.0) for v in magnitudes
        ]
    else:
        matrices = [
            (1.0, v, 0.0, 0.0, 1.0, 0.0) if name == "ShearX" else (1.0, 0.0, 0.0, v, 1.0, 0.0)
            for v in magnitudes
        ]
    return affine_coefficients(matrices)


def run_op(name: str, x: torch.Tensor, parameters: torch.Tensor) -> torch.Tensor:
    """Op ``name`` on x (n,3,H,W) uint8 with its ``op_parameters`` already on the device (float64, exact integers)."""
    if name == "Identity":
        return x
    if name in PIXEL_OPS:
        return PIXEL_OPS[name](x, parameters[:, 0])
    if name in ("TranslateX", "TranslateY"):
        return translate(x, parameters.long())
    return affine(x, parameters.long())


PIXEL_OPS = {
    "AutoContrast": autocontrast,
    "Brightness": brightness,
    "Color": color,
    "Contrast": contrast,
    "Equalize": equalize,
    "Posterize": posterize,
    "Sharpness": sharpness,
    "Solarize": solarize,
}


def to_device(values: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host tensor on ``device`` without a host sync: pinned and copied asynchronously on CUDA (a pageable copy
    waits for the stream), as is elsewhere."""
    if device.type != "cuda":
        return values.to(device)
    return values.pin_memory().to(device, non_blocking=True)


class _Upload:
    """The host numbers of one batch (op rows, op parameters, cutout boxes), gathered in one float64 buffer (exact
    for these integers, far below 2^53) and sent to the device in one copy; ``get`` slices it there, by offsets the
    host knows, so no op waits for the host."""

    def __init__(self) -> None:
        self.parts: list[np.ndarray] = []
        self.size = 0
        self.sent: torch.Tensor | None = None

    def add(self, values: np.ndarray) -> tuple[int, tuple[int, ...]]:
        values = np.asarray(values, dtype=np.float64)
        handle = (self.size, values.shape)
        self.parts.append(values.reshape(-1))
        self.size += values.size
        return handle

    def send(self, device: torch.device) -> None:
        self.sent = to_device(
            torch.from_numpy(np.concatenate(self.parts) if self.parts else np.zeros(0)), device
        )

    def get(self, handle: tuple[int, tuple[int, ...]]) -> torch.Tensor:
        assert self.sent is not None
        start, shape = handle
        return self.sent[start : start + math.prod(shape)].view(shape)


def apply_op(name: str, x: torch.Tensor, magnitudes: list[float]) -> torch.Tensor:
    """Op ``name`` of ``OPS`` on the images x (n,3,H,W) uint8, one magnitude per image."""
    upload = _Upload()
    handle = upload.add(op_parameters(name, magnitudes, x.shape[3], x.shape[2]))
    upload.send(x.device)
    return run_op(name, x, upload.get(handle))


def _cutout(x: torch.Tensor, box: torch.Tensor, fill: torch.Tensor) -> torch.Tensor:
    """Fill each image's box (x0, y0, x1, y1) (n, 4) int64, corners included, with ``fill`` (C,) uint8."""
    c, height, width = x.shape[1:]
    cols, rows = torch.arange(width, device=x.device), torch.arange(height, device=x.device)
    inside_x = (cols >= box[:, 0:1]) & (cols <= box[:, 2:3])
    inside_y = (rows >= box[:, 1:2]) & (rows <= box[:, 3:4])
    mask = (inside_y[:, :, None] & inside_x[:, None, :])[:, None]
    return torch.where(mask, fill.view(1, c, 1, 1), x)


def cutout(x: torch.Tensor, boxes: Sequence[tuple[int, int, int, int]]) -> torch.Tensor:
    """Fill each image's box (x0, y0, x1, y1), corners included, with CUTOUT_FILL."""
    upload = _Upload()
    box, fill = upload.add(np.array(boxes).reshape(-1, 4)), upload.add(np.array(CUTOUT_FILL))
    upload.send(x.device)
    return _cutout(x, upload.get(box).long(), upload.get(fill).to(torch.uint8))


def strong_views(images: torch.Tensor, decisions: Sequence[StrongDraw]) -> torch.Tensor:
    """Images (n,3,H,W) uint8, already cropped and flipped as ``decisions`` say → their strong views, uint8.

    Every decision is read on the host; its numbers reach the device in one asynchronous copy (``_Upload``), so the
    batch costs no host sync however many ops it draws (it used to cost one blocking copy per op and slot)."""
    height, width = images.shape[2:]
    upload = _Upload()
    # (op name, rows handle, parameters handle), in the order the reference applies them
    groups: list[tuple[str, tuple[int, tuple[int, ...]], tuple[int, tuple[int, ...]]]] = []
    for slot in range(len(decisions[0].ops) if decisions else 0):
        ops = np.array([d.ops[slot] for d in decisions])
        for op in np.unique(ops):
            name, rows = OPS[op][0], np.flatnonzero(ops == op)
            if name == "Identity":
                continue
            parameters = op_parameters(
                name, [decisions[int(i)].magnitudes[slot] for i in rows], width, height
            )
            groups.append((name, upload.add(rows), upload.add(parameters)))
    box = upload.add(
        np.array([cutout_box(*d.cutout, width, height) for d in decisions]).reshape(-1, 4)
    )
    fill = upload.add(np.array(CUTOUT_FILL))
    upload.send(images.device)
    x = images.clone() if groups else images
    for name, rows_at, parameters_at in groups:
        chosen = upload.get(rows_at).long()
        x.index_copy_(0, chosen, run_op(name, x.index_select(0, chosen), upload.get(parameters_at)))
    return _cutout(x, upload.get(box).long(), upload.get(fill).to(torch.uint8))
