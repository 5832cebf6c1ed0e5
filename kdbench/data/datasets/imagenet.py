"""``imagenet``: ILSVRC-2012 as an image folder read by ``data/folder.py``; never downloaded."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

from kdbench.data import identity
from kdbench.data.augment.imagenet_views import CropOptions
from kdbench.data.folder import SPLITS, FolderDataset, load_folder
from kdbench.data.registry import DATASETS, DatasetInfo, Options, SmokeData
from kdbench.errors import KdbenchError

DEFAULT_SCALE, DEFAULT_RATIO = CropOptions.scale, CropOptions.ratio
IMAGENET_CLASSES, IMAGENET_SIZES = 1000, (1_281_167, 50_000)  # ILSVRC-2012 train / val
# ImageNet recipes smoke-test the image-file path: a small synthetic ImageNet-shaped JPEG folder, 64 px crops,
# with the recipe's crop ranges.
SMOKE_IMAGENET_DATA = {
    "num_classes": 8,
    "train_per_class": 16,
    "val_per_class": 8,
    "seed": 0,
    "image_size": 64,
}


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
        crop_options(image_size, crop_scale, crop_ratio),
        hint,
    )


def crop_options(image_size: int, scale: Sequence[float], ratio: Sequence[float]) -> CropOptions:
    """The view options of the dataset options ``image_size``, ``crop_scale`` and ``crop_ratio``."""
    for name, pair in (("crop_scale", scale), ("crop_ratio", ratio)):
        if len(pair) != 2:
            raise KdbenchError(f"dataset option {name} must be [low, high], got {list(pair)}")
    return CropOptions(
        image_size, (float(scale[0]), float(scale[1])), (float(ratio[0]), float(ratio[1]))
    )


def imagenet_content(options: Options, data_dir: Path) -> str | None:
    """The sha256 of the folder's manifest (``data/identity.py``), cached by its class folders' times; None when
    the folder is missing (the loader then says what is missing, with the download hint)."""
    root = data_dir / "imagenet"
    splits = [root / split for split in SPLITS]
    if not all(split.is_dir() for split in splits):
        return None
    stamp = hashlib.sha256(
        "\n".join(
            f"{d}:{d.stat().st_mtime_ns}"
            for split in splits
            for d in sorted(split.iterdir())
            if d.is_dir()
        ).encode()
    ).hexdigest()
    return identity.cached_digest(
        f"folder:{root.resolve()}", stamp, lambda: identity.manifest_sha256(root, splits)
    )


DATASETS.add(
    "imagenet",
    DatasetInfo(
        name="imagenet",
        kind="folder",
        load=load_imagenet,
        num_classes=lambda options: IMAGENET_CLASSES,
        image_size=lambda options: options["image_size"],
        sizes=lambda options, data_dir: IMAGENET_SIZES,
        smoke=SmokeData(
            "imagenet_synthetic", SMOKE_IMAGENET_DATA, kept=("crop_scale", "crop_ratio")
        ),
        content=imagenet_content,
        ffcv=True,
    ),
)
