"""Datasets (in-memory arrays, image folders), deterministic epoch plans, the reference loaders and the faster kinds."""

from kdbench.data.arrays import ImageArrays, subset
from kdbench.data.augment import EpochPlan, epoch_plan
from kdbench.data.dataset import Dataset, example_images
from kdbench.data.folder import FolderDataset
from kdbench.data.loaders import test_loader, train_loader
from kdbench.data.registry import DATASETS, load_dataset, resolve_data_dir
from kdbench.data.select import LOADER_KINDS, Loaders, make_loaders

__all__ = [
    "DATASETS",
    "LOADER_KINDS",
    "Dataset",
    "EpochPlan",
    "FolderDataset",
    "ImageArrays",
    "Loaders",
    "epoch_plan",
    "example_images",
    "load_dataset",
    "make_loaders",
    "resolve_data_dir",
    "subset",
    "test_loader",
    "train_loader",
]
