"""NumPy reference pieces shared by the loss tests (written from the definitions, float64)."""

from __future__ import annotations

import numpy as np


def ref_adaptive_pool(x: np.ndarray, out: int) -> np.ndarray:
    """Adaptive average pooling to out × out: bin i covers [floor(i·H/out), ceil((i+1)·H/out))."""
    b, c, h, w = x.shape
    y = np.empty((b, c, out, out))
    for i in range(out):
        r0, r1 = (i * h) // out, -((-(i + 1) * h) // out)
        for j in range(out):
            c0, c1 = (j * w) // out, -((-(j + 1) * w) // out)
            y[:, :, i, j] = x[:, :, r0:r1, c0:c1].mean(axis=(2, 3))
    return y


def ref_align(s: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The larger map is pooled to the smaller square size."""
    if s.shape[2] > t.shape[2]:
        s = ref_adaptive_pool(s, t.shape[2])
    elif s.shape[2] < t.shape[2]:
        t = ref_adaptive_pool(t, s.shape[2])
    return s, t
