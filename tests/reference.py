"""Pieces shared by the tests: NumPy references (written from the definitions, float64) and fixtures' builders."""

from __future__ import annotations

import numpy as np
import torch
from kdbench import models
from torch import nn


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


def calibrated_teacher(name: str, num_classes: int) -> models.KDModel:
    """A random network whose BN running statistics were averaged over random images, in eval mode
    (an uncalibrated random net in eval mode gives exploding activations)."""
    torch.manual_seed(0)
    teacher = models.create(name, num_classes=num_classes)
    bns = [m for m in teacher.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for bn in bns:
        bn.momentum = None  # cumulative average over the calibration batches
    teacher.train()
    with torch.no_grad():
        for _ in range(2):
            teacher(torch.randn(16, 3, 32, 32))
    for bn in bns:
        bn.momentum = 0.1
    return teacher.eval()
