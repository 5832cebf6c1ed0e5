"""What the training loop needs of any dataset kind: ``Dataset`` and ``example_images``.

Both kinds give ``name``, ``num_classes``, ``y_train`` / ``y_test`` (int64 labels; their lengths are the split
sizes), ``mean`` / ``std`` and ``take`` (for ``subset``); loaders come from ``make_loaders``.
"""

from __future__ import annotations

import torch

from kdbench.data.arrays import ImageArrays
from kdbench.data.folder import FolderDataset
from kdbench.data.loaders.torch_arrays import test_loader
from kdbench.data.loaders.torch_folder import example_images as folder_examples

Dataset = ImageArrays | FolderDataset


def example_images(dataset: Dataset, count: int = 2) -> torch.Tensor:
    """The first ``count`` test images as the network sees them: what methods probe their shapes with."""
    if isinstance(dataset, FolderDataset):
        return folder_examples(dataset, count)
    return next(iter(test_loader(dataset, count)))[0]
