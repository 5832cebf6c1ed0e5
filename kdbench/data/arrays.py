"""In-memory image datasets and class-stratified subsets."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Protocol, TypeVar

import numpy as np

from kdbench.errors import KdbenchError


@dataclass(frozen=True)
class ImageArrays:
    """A whole dataset in memory: uint8 (N,H,W,3) images, int64 labels, and its normalisation constants.

    ``mean``/``std`` are per channel, for pixels scaled to [0, 1].
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    mean: tuple[
        float, ...
    ]  # 3 values (R, G, B): checked in __post_init__, so any file's are accepted to check
    std: tuple[float, ...]

    def __post_init__(self) -> None:
        for split in ("train", "test"):
            x, y = getattr(self, f"x_{split}"), getattr(self, f"y_{split}")
            if x.dtype != np.uint8 or x.ndim != 4 or x.shape[-1] != 3:
                raise KdbenchError(
                    f"dataset {self.name!r}: x_{split} must be uint8 images of shape (N,H,W,3), "
                    f"got {x.dtype} {x.shape}"
                )
            if y.dtype != np.int64 or y.shape != x.shape[:1]:
                raise KdbenchError(
                    f"dataset {self.name!r}: y_{split} must be int64 of shape ({len(x)},), got {y.dtype} {y.shape}"
                )
            if len(y) and (y.min() < 0 or y.max() >= self.num_classes):
                raise KdbenchError(
                    f"dataset {self.name!r}: y_{split} has labels in [{y.min()}, {y.max()}], "
                    f"outside [0, {self.num_classes - 1}] for num_classes={self.num_classes}"
                )
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise KdbenchError(
                f"dataset {self.name!r}: mean and std need 3 values each (std > 0), got {self.mean} / {self.std}"
            )

    def take(self, keep_train: np.ndarray, keep_test: np.ndarray) -> ImageArrays:
        """The samples at the given indices of each split."""
        return dataclasses.replace(
            self,
            x_train=self.x_train[keep_train],
            y_train=self.y_train[keep_train],
            x_test=self.x_test[keep_test],
            y_test=self.y_test[keep_test],
        )


D = TypeVar("D", bound="_Splits")


class _Splits(Protocol):
    """What ``subset`` needs of a dataset (in-memory arrays or image files); read-only, as frozen
    dataclasses' fields are."""

    @property
    def y_train(self) -> np.ndarray: ...

    @property
    def y_test(self) -> np.ndarray: ...

    @property
    def num_classes(self) -> int: ...

    def take(self: D, keep_train: np.ndarray, keep_test: np.ndarray) -> D: ...


def subset(dataset: D, train_fraction: float = 1.0, test_fraction: float = 1.0, seed: int = 0) -> D:
    """Keep a fraction of each split, stratified by class; the same arguments always keep the same images.

    Each split keeps ``max(1, round(fraction * N))`` images, shared out over the classes in proportion to
    their counts (largest remainder). Kept images stay in their original order; the name is unchanged.
    """
    keep_train = _stratified_indices(
        dataset.y_train, dataset.num_classes, train_fraction, (seed, 0), "train"
    )
    keep_test = _stratified_indices(
        dataset.y_test, dataset.num_classes, test_fraction, (seed, 1), "test"
    )
    return dataset.take(keep_train, keep_test)


def _stratified_indices(
    labels: np.ndarray, num_classes: int, fraction: float, seed: tuple[int, int], split: str
) -> np.ndarray:
    """Sorted indices of a class-stratified random sample of ``fraction`` of ``labels``."""
    if not 0.0 < fraction <= 1.0:
        raise KdbenchError(f"{split}_fraction must be in (0, 1], got {fraction}")
    counts = np.bincount(labels, minlength=num_classes)
    exact = counts * fraction
    quota = np.floor(exact).astype(np.int64)
    total = min(len(labels), max(1, round(fraction * len(labels))))
    by_remainder = np.argsort(-(exact - quota), kind="stable")
    quota[by_remainder[: total - quota.sum()]] += 1
    rank = np.random.default_rng(list(seed)).permutation(
        len(labels)
    )  # random priority of each sample
    by_class_then_rank = np.lexsort((rank, labels))
    start = np.concatenate(([0], np.cumsum(counts)[:-1]))
    keep = np.concatenate([by_class_then_rank[s : s + q] for s, q in zip(start, quota)])
    return np.sort(keep)
