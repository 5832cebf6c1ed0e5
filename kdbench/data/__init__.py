"""Datasets as in-memory arrays, deterministic epoch plans, and the reference train/test loaders."""

from kdbench.data.arrays import ImageArrays, subset
from kdbench.data.augment import EpochPlan, epoch_plan
from kdbench.data.loaders import test_loader, train_loader
from kdbench.data.registry import DATASETS, load_dataset, resolve_data_dir

__all__ = [
    "DATASETS",
    "EpochPlan",
    "ImageArrays",
    "epoch_plan",
    "load_dataset",
    "resolve_data_dir",
    "subset",
    "test_loader",
    "train_loader",
]
