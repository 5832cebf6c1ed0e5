"""Shared fixtures. Tests never use the network; real-data tests read $KDBENCH_DATA."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def shared_data() -> Path:
    """The offline data folder (../shared/data), or skip with the reason."""
    root = os.environ.get("KDBENCH_DATA")
    if not root or not Path(root).is_dir():
        pytest.skip("KDBENCH_DATA is not set to the shared offline data folder")
    return Path(root)


@pytest.fixture(autouse=True, scope="session")
def one_thread() -> Iterator[None]:
    """In-process tests run torch on one thread: their tensors are tiny, and on a busy 2-core
    machine OpenMP's spinning threads make small ops tens of times slower (docs/references.md §Dependencies' side effects)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
