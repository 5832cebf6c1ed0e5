"""The ImageNet views of the papers' code, with every random draw fixed by (seed, epoch, sample index).

Train (DIST B1's ``resnet_dist.yaml``, mdistiller ``mdistiller/dataset/imagenet.py``, torchvision's
``references/classification/presets.py``):
RandomResizedCrop(size, scale, ratio, bilinear) + horizontal flip. The crop box follows the rule of
torchvision's ``RandomResizedCrop.get_params``: up to 10 attempts of (area fraction ~ U(scale), log aspect
ratio ~ U(log ratio)), the first box that fits is placed uniformly; else the centre crop of the whole image
clamped to the ratio range. Test: Resize(round(size·256/224)) of the shorter side + CenterCrop(size).
ImageNet mean/std normalisation. All PIL operations (what torchvision's transforms do on PIL images).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from kdbench.data.augment.epoch_plan import to_normalized_tensor
from kdbench.errors import KdbenchError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CROP_ATTEMPTS = 10
CROP_STREAM = (
    2  # keeps the crop draws apart from other per-sample streams (MLKD's strong view is 1)
)


@dataclass(frozen=True)
class CropOptions:
    """The crop size of both views and the RandomResizedCrop ranges (torchvision's defaults).

    SimKD's DALI pipeline draws from other ranges (scale [0.1, 1], ratio [0.8, 1.25]); a recipe names them
    with the dataset options ``crop_scale`` / ``crop_ratio``.
    """

    image_size: int = 224
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)

    def __post_init__(self) -> None:
        if (
            isinstance(self.image_size, bool)
            or not isinstance(self.image_size, int)
            or self.image_size < 8
        ):
            raise KdbenchError(
                f"dataset option image_size must be an integer >= 8, got {self.image_size!r}"
            )
        for name, (low, high) in (("crop_scale", self.scale), ("crop_ratio", self.ratio)):
            if not 0 < low <= high:
                raise KdbenchError(
                    f"dataset option {name} must be [low, high] with 0 < low <= high, got {[low, high]}"
                )

    @property
    def resize_size(self) -> int:
        """The test view's shorter side before the centre crop: 256 at 224."""
        return round(self.image_size * 256 / 224)


def crop_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The generator of sample ``index``'s crop and flip in epoch ``epoch`` of a run seeded ``seed``."""
    return np.random.default_rng(np.random.SeedSequence([seed, epoch, index, CROP_STREAM]))


def crop_box(
    rng: np.random.Generator,
    height: int,
    width: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
) -> tuple[int, int, int, int]:
    """(top, left, h, w) of a random resized crop of a ``height`` × ``width`` image (torchvision's rule)."""
    area = height * width
    log_low, log_high = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(CROP_ATTEMPTS):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_low, log_high))
        w = round(math.sqrt(target_area * aspect))
        h = round(math.sqrt(target_area / aspect))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, round(width / min(ratio))
    elif in_ratio > max(ratio):
        h, w = height, round(height * max(ratio))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def train_view(image: Image.Image, rng: np.random.Generator, options: CropOptions) -> Image.Image:
    """RandomResizedCrop (bilinear) then a horizontal flip with probability 1/2, both drawn from ``rng``."""
    top, left, h, w = crop_box(rng, image.height, image.width, options.scale, options.ratio)
    size = options.image_size
    # Crop, then resize (as torchvision does): PIL's resize(box=...) would filter across the box's edges.
    view = image.crop((left, top, left + w, top + h)).resize(
        (size, size), Image.Resampling.BILINEAR
    )
    return view.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if rng.random() < 0.5 else view


def test_view(image: Image.Image, options: CropOptions) -> Image.Image:
    """Resize the shorter side to ``options.resize_size`` (bilinear), then crop the centre ``image_size`` square."""
    short = options.resize_size
    width, height = image.size
    if width <= height:
        new_w, new_h = short, int(short * height / width)
    else:
        new_w, new_h = int(short * width / height), short
    if (new_w, new_h) != (width, height):
        image = image.resize((new_w, new_h), Image.Resampling.BILINEAR)
    size = options.image_size
    top, left = round((new_h - size) / 2.0), round((new_w - size) / 2.0)
    return image.crop((left, top, left + size, top + size))


def decode(path: str) -> Image.Image:
    """An image file as RGB (what torchvision's ImageFolder loader returns)."""
    with open(path, "rb") as fh:
        return Image.open(fh).convert("RGB")


def to_tensor(image: Image.Image, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """float32 (3,H,W) normalised with ``mean``/``std`` (shape (3,1,1))."""
    return to_normalized_tensor(np.array(image), mean, std)
