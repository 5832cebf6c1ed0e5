"""``imagenet_synthetic``: a small, deterministic, learnable ImageNet-shaped JPEG folder for smoke runs and tests.

Each class has a distinct mean colour plus a smooth random colour pattern; an image is its class pattern
sampled at a random size (64–96 px per side, so aspect ratios vary), plus pixel noise, saved as JPEG. Class
folders carry wnid-like names. The folder is generated on first use under the data dir, built in a temporary
folder and renamed into place, so two processes racing to build it both end up reading one complete folder.
It is then read by exactly the code that reads ImageNet (``data/folder.py``).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from kdbench.data.datasets.imagenet import DEFAULT_RATIO, DEFAULT_SCALE, crop_options
from kdbench.data.folder import FolderDataset, load_folder
from kdbench.data.registry import DATASETS, DatasetInfo
from kdbench.errors import KdbenchError

FORMAT = "v1"  # bump when the generated images change
MIN_SIDE, MAX_SIDE = 64, 96
_GRID = 3  # the pattern is a random _GRID x _GRID colour grid, interpolated bilinearly
_PATTERN, _NOISE = 40.0, 12.0  # grey levels of the pattern (per unit) and of the pixel noise (std)
JPEG_QUALITY = 90
CLASSES, TRAIN_PER_CLASS, VAL_PER_CLASS = 8, 24, 8  # the defaults: 192 train and 64 val images


def wnid(label: int) -> str:
    """A WordNet-id-like folder name; names sort in label order (the first is ImageNet's first class)."""
    return f"n{1440764 + 1000 * label:08d}"


def synthetic_folder(
    data_dir: Path,
    *,
    num_classes: int = CLASSES,
    train_per_class: int = TRAIN_PER_CLASS,
    val_per_class: int = VAL_PER_CLASS,
    seed: int = 0,
) -> Path:
    """The folder holding ``train/`` and ``val/`` for these options, generated first if it does not exist."""
    for option, value in {
        "num_classes": num_classes,
        "train_per_class": train_per_class,
        "val_per_class": val_per_class,
        "seed": seed,
    }.items():
        lowest = 0 if option == "seed" else 1
        if isinstance(value, bool) or not isinstance(value, int) or value < lowest:
            raise KdbenchError(
                f"imagenet_synthetic option {option} must be an integer >= {lowest}, got {value!r}"
            )
    root = (
        data_dir
        / "imagenet_synthetic"
        / f"{FORMAT}-c{num_classes}-t{train_per_class}-v{val_per_class}-s{seed}"
    )
    if root.is_dir():
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(dir=root.parent, prefix=f".{root.name}.", suffix=".building"))
    try:
        _generate(building, num_classes, train_per_class, val_per_class, seed)
        try:
            os.rename(building, root)
        except OSError:
            if not root.is_dir():  # not a lost race: a real failure
                raise
    finally:
        shutil.rmtree(building, ignore_errors=True)
    return root


def load_imagenet_synthetic(
    data_dir: Path,
    *,
    num_classes: int = CLASSES,
    train_per_class: int = TRAIN_PER_CLASS,
    val_per_class: int = VAL_PER_CLASS,
    seed: int = 0,
    image_size: int = 224,
    crop_scale: Sequence[float] = DEFAULT_SCALE,
    crop_ratio: Sequence[float] = DEFAULT_RATIO,
) -> FolderDataset:
    """The synthetic ImageNet-shaped folder (generated on first use), read exactly as ``imagenet`` is."""
    root = synthetic_folder(
        data_dir,
        num_classes=num_classes,
        train_per_class=train_per_class,
        val_per_class=val_per_class,
        seed=seed,
    )
    return load_folder(
        "imagenet_synthetic",
        root,
        data_dir / "index",
        crop_options(image_size, crop_scale, crop_ratio),
        "Delete the folder to have it generated again.",
    )


DATASETS.add(
    "imagenet_synthetic",
    DatasetInfo(
        name="imagenet_synthetic",
        kind="folder",
        load=load_imagenet_synthetic,
        num_classes=lambda options: options["num_classes"],
        image_size=lambda options: options["image_size"],
        sizes=lambda options, data_dir: (
            options["num_classes"] * options["train_per_class"],
            options["num_classes"] * options["val_per_class"],
        ),
        ffcv=True,
    ),
)


def _generate(
    out: Path, num_classes: int, train_per_class: int, val_per_class: int, seed: int
) -> None:
    pattern_rng, train_rng, val_rng = (
        np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(3)
    )
    colours = pattern_rng.uniform(48, 208, size=(num_classes, 3))
    grids = pattern_rng.standard_normal((num_classes, _GRID, _GRID, 3))
    for split, count, rng in (
        ("train", train_per_class, train_rng),
        ("val", val_per_class, val_rng),
    ):
        for label in range(num_classes):
            folder = out / split / wnid(label)
            folder.mkdir(parents=True)
            for i in range(count):
                height, width = (int(v) for v in rng.integers(MIN_SIDE, MAX_SIDE + 1, size=2))
                pattern = np.einsum(
                    "ya,abc,xb->yxc", _interpolation(height), grids[label], _interpolation(width)
                )
                pixels = (
                    colours[label]
                    + _PATTERN * pattern
                    + _NOISE * rng.standard_normal((height, width, 3))
                )
                image = Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8))
                image.save(folder / f"{wnid(label)}_{i}.JPEG", quality=JPEG_QUALITY)


def _interpolation(size: int) -> np.ndarray:
    """(size, _GRID) weights of linear interpolation from the grid points spread over ``size`` pixels."""
    position = np.linspace(0, _GRID - 1, size)
    return np.clip(1 - np.abs(position[:, None] - np.arange(_GRID)[None, :]), 0, None)
