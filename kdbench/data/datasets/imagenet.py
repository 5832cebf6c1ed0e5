"""The ``imagenet`` and ``imagenet_synthetic`` datasets: image folders read by ``data/folder.py``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kdbench.data.augment.imagenet_views import CropOptions
from kdbench.data.datasets.imagenet_synthetic import (
    CLASSES,
    TRAIN_PER_CLASS,
    VAL_PER_CLASS,
    synthetic_folder,
)
from kdbench.data.folder import FolderDataset, load_folder
from kdbench.errors import KdbenchError

DEFAULT_SCALE, DEFAULT_RATIO = CropOptions.scale, CropOptions.ratio
IMAGENET_CLASSES, IMAGENET_SIZES = 1000, (1_281_167, 50_000)  # ILSVRC-2012 train / val


def load_imagenet(
    data_dir: Path,
    *,
    image_size: int = 224,
    crop_scale: Sequence[float] = DEFAULT_SCALE,
    crop_ratio: Sequence[float] = DEFAULT_RATIO,
) -> FolderDataset:
    """ILSVRC-2012 from ``<data_dir>/imagenet/{train,val}/<wnid>/*.JPEG``; never downloaded (it needs registration)."""
    hint = (
        f"ImageNet is not downloaded by kdbench (it needs registration at image-net.org): put it under {data_dir}/imagenet, "
        "or point --data-dir / $KDBENCH_DATA at the folder that holds imagenet/."
    )
    return load_folder(
        "imagenet",
        data_dir / "imagenet",
        data_dir / "index",
        _crop(image_size, crop_scale, crop_ratio),
        hint,
    )


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
        _crop(image_size, crop_scale, crop_ratio),
        "Delete the folder to have it generated again.",
    )


def _crop(image_size: int, scale: Sequence[float], ratio: Sequence[float]) -> CropOptions:
    for name, pair in (("crop_scale", scale), ("crop_ratio", ratio)):
        if len(pair) != 2:
            raise KdbenchError(f"dataset option {name} must be [low, high], got {list(pair)}")
    return CropOptions(
        image_size, (float(scale[0]), float(scale[1])), (float(ratio[0]), float(ratio[1]))
    )


def folder_sizes(name: str, options: dict[str, Any]) -> tuple[int, int] | None:
    """(train, test) image counts of an image-folder dataset spec without reading it; None for other datasets."""
    if name == "imagenet":
        return IMAGENET_SIZES
    if name == "imagenet_synthetic":
        classes = options.get("num_classes", CLASSES)
        return classes * options.get("train_per_class", TRAIN_PER_CLASS), classes * options.get(
            "val_per_class", VAL_PER_CLASS
        )
    return None


def folder_geometry(name: str, options: dict[str, Any]) -> tuple[int, int] | None:
    """(number of classes, crop size) of an image-folder dataset spec without reading it; None for other datasets."""
    if name not in ("imagenet", "imagenet_synthetic"):
        return None
    classes = IMAGENET_CLASSES if name == "imagenet" else options.get("num_classes", CLASSES)
    return classes, options.get("image_size", CropOptions.image_size)
