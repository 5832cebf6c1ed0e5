"""A small, deterministic and learnable stand-in for CIFAR: smooth class prototypes plus shift and noise."""

from __future__ import annotations

import numpy as np

from kdbench.data.arrays import ImageArrays
from kdbench.data.datasets.cifar import CIFAR_SPECS
from kdbench.data.registry import DATASETS, DatasetInfo
from kdbench.errors import KdbenchError

_GRID = 3  # prototypes are random _GRID x _GRID colour grids, upsampled smoothly
_MAX_SHIFT = 3  # pixels a sample may be shifted from its prototype, each way
_CONTRAST = 64.0  # grey levels per unit of prototype
_NOISE = 24.0  # std of per-pixel noise, in grey levels


def make_synthetic(
    *,
    num_classes: int = 100,
    image_size: int = 32,
    train_size: int = 512,
    test_size: int = 256,
    seed: int = 0,
) -> ImageArrays:
    """Balanced synthetic images: the same options always give identical arrays.

    Each class has a smooth random colour prototype; a sample is its class prototype, randomly shifted by up
    to 3 pixels, plus Gaussian pixel noise, clipped to uint8. Normalisation uses the CIFAR-100 constants.
    """
    options = {
        "num_classes": num_classes,
        "image_size": image_size,
        "train_size": train_size,
        "test_size": test_size,
    }
    for option, value in {**options, "seed": seed}.items():
        lowest = 0 if option == "seed" else 1
        if isinstance(value, bool) or not isinstance(value, int) or value < lowest:
            raise KdbenchError(
                f"synthetic dataset option {option} must be an integer >= {lowest}, got {value!r}"
            )
    # independent streams, so the prototypes and the test set do not change with train_size
    prototype_rng, train_rng, test_rng = (
        np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(3)
    )
    canvas = image_size + 2 * _MAX_SHIFT
    grid = prototype_rng.standard_normal((num_classes, _GRID, _GRID, 3))
    up = _interpolation_matrix(canvas, _GRID)
    prototypes = np.einsum("ya,kabc,xb->kyxc", up, grid, up)
    prototypes /= prototypes.std(axis=(1, 2, 3), keepdims=True)
    x_train, y_train = _samples(prototypes, image_size, train_size, train_rng)
    x_test, y_test = _samples(prototypes, image_size, test_size, test_rng)
    spec = CIFAR_SPECS["cifar100"]
    return ImageArrays(
        "synthetic", x_train, y_train, x_test, y_test, num_classes, spec.mean, spec.std
    )


def _interpolation_matrix(size: int, grid: int) -> np.ndarray:
    """(size, grid) weights of linear interpolation from ``grid`` points spread over ``size`` pixels."""
    position = np.linspace(0, grid - 1, size)
    return np.clip(1 - np.abs(position[:, None] - np.arange(grid)[None, :]), 0, None)


def _samples(
    prototypes: np.ndarray, size: int, count: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """``count`` class-balanced noisy, shifted crops of the prototypes, in random order."""
    num_classes = len(prototypes)
    labels = rng.permutation(np.arange(count) % num_classes).astype(np.int64)
    dy, dx = rng.integers(0, 2 * _MAX_SHIFT + 1, size=(2, count))
    rows = dy[:, None] + np.arange(size)[None, :]
    cols = dx[:, None] + np.arange(size)[None, :]
    clean = prototypes[labels[:, None, None], rows[:, :, None], cols[:, None, :]]
    noisy = 128.0 + _CONTRAST * clean + _NOISE * rng.standard_normal(clean.shape)
    return np.clip(np.rint(noisy), 0, 255).astype(np.uint8), labels


DATASETS.add(
    "synthetic",
    DatasetInfo(
        name="synthetic",
        kind="arrays",
        load=make_synthetic,
        num_classes=lambda options: options["num_classes"],
        image_size=lambda options: options["image_size"],
        sizes=lambda options, data_dir: (options["train_size"], options["test_size"]),
    ),
)
