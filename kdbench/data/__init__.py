"""Datasets (in-memory arrays, image folders), deterministic epoch plans, the reference loaders and the faster kinds."""

from kdbench.data import datasets  # noqa: F401  (registers every dataset with DATASETS)
from kdbench.data.arrays import ImageArrays, subset
from kdbench.data.augment.epoch_plan import EpochPlan, epoch_plan
from kdbench.data.dataset import Dataset, example_images
from kdbench.data.folder import FolderDataset
from kdbench.data.loaders.factory import LOADERS, Loaders, make_loaders
from kdbench.data.loaders.torch_arrays import test_loader, train_loader
from kdbench.data.registry import (
    DATASETS,
    DatasetInfo,
    dataset_info,
    load_arrays,
    load_dataset,
    resolve_data_dir,
)

__all__ = [
    "DATASETS",
    "DatasetInfo",
    "LOADERS",
    "Dataset",
    "EpochPlan",
    "FolderDataset",
    "ImageArrays",
    "Loaders",
    "dataset_info",
    "epoch_plan",
    "example_images",
    "load_arrays",
    "load_dataset",
    "make_loaders",
    "resolve_data_dir",
    "subset",
    "test_loader",
    "train_loader",
]
