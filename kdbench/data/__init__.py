"""Datasets as in-memory arrays, deterministic epoch plans, the reference loaders and the faster kinds."""

from kdbench.data.arrays import ImageArrays, subset
from kdbench.data.augment import EpochPlan, epoch_plan
from kdbench.data.loaders import test_loader, train_loader
from kdbench.data.registry import DATASETS, load_dataset, resolve_data_dir
from kdbench.data.select import LOADER_KINDS, Loaders, make_loaders

__all__ = [
    "DATASETS",
    "LOADER_KINDS",
    "EpochPlan",
    "ImageArrays",
    "Loaders",
    "epoch_plan",
    "load_dataset",
    "make_loaders",
    "resolve_data_dir",
    "subset",
    "test_loader",
    "train_loader",
]
