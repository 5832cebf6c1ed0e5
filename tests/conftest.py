"""Shared fixtures. Tests never use the network; real-data tests read $KDBENCH_DATA."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def shared_data() -> Path:
    """The offline data folder (../shared/data), or skip with the reason."""
    root = os.environ.get("KDBENCH_DATA")
    if not root or not Path(root).is_dir():
        pytest.skip("KDBENCH_DATA is not set to the shared offline data folder")
    return Path(root)
