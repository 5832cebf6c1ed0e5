"""MLKD's strong view: deterministic per (seed, epoch, sample), the specified op distribution, Cutout."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image

from kdbench import data
from kdbench.data.strong import CUTOUT_FILL, OPS, cutout, sample_rng, strong_view


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return (np.random.default_rng(0).random((32, 32, 3)) * 255).astype(np.uint8)


def test_deterministic_per_seed_epoch_and_sample(image):
    a = strong_view(image, sample_rng(1, 2, 3))
    assert a.shape == image.shape and a.dtype == np.uint8
    assert np.array_equal(a, strong_view(image, sample_rng(1, 2, 3)))
    assert not np.array_equal(a, strong_view(image, sample_rng(1, 3, 3)))
    assert not np.array_equal(a, strong_view(image, sample_rng(1, 2, 4)))


@pytest.mark.parametrize("name,op,low,high", OPS, ids=[o[0] for o in OPS])
def test_every_op_at_both_ends_of_its_range(image, name, op, low, high):
    pil = Image.fromarray(image)
    for magnitude in (low, high):
        out = op(pil, int(magnitude) if name == "Posterize" else magnitude)
        assert out.size == pil.size and out.mode == "RGB"


def test_ops_are_drawn_uniformly_with_replacement(image, monkeypatch):
    """Two ops per image, each uniform over the 14 (so a repeated op happens ~1/14 of the time)."""
    drawn: list[tuple[str, ...]] = []
    wrapped = []
    for name, op, low, high in OPS:
        def record(im, v, name=name, op=op):
            drawn[-1] += (name,)
            return op(im, v)
        wrapped.append((name, record, low, high))
    monkeypatch.setattr("kdbench.data.strong.OPS", tuple(wrapped))
    for index in range(2800):
        drawn.append(())
        strong_view(image, sample_rng(0, 1, index))
    assert all(len(d) == 2 for d in drawn)
    counts = Counter(name for d in drawn for name in d)
    assert set(counts) == {o[0] for o in OPS}
    assert all(abs(c / 5600 - 1 / 14) < 0.02 for c in counts.values())
    repeats = sum(d[0] == d[1] for d in drawn) / len(drawn)
    assert abs(repeats - 1 / 14) < 0.02


def test_cutout_fills_a_clipped_square(image):
    rng = sample_rng(0, 0, 0)
    filled = [np.all(np.asarray(cutout(Image.fromarray(image), rng, max_fraction=0.5)) == CUTOUT_FILL, axis=2).sum()
              for _ in range(200)]
    assert max(filled) > 0 and max(filled) <= (16 + 1) ** 2
    assert np.mean(filled) > 20  # side ~ U(0, 16): mean area well above zero


def test_loader_adds_the_strong_view_as_a_fourth_element():
    arrays = data.load_dataset("synthetic", train_size=40, test_size=8, num_classes=4)
    plain = next(iter(data.train_loader(arrays, 8, seed=0, epoch=1)))
    weak, labels, indices, strong = next(iter(data.train_loader(arrays, 8, seed=0, epoch=1, strong=True)))
    assert len(plain) == 3 and torch.equal(plain[0], weak) and torch.equal(plain[2], indices)
    assert strong.shape == weak.shape and not torch.equal(strong, weak)
    again = next(iter(data.train_loader(arrays, 8, seed=0, epoch=1, strong=True, num_workers=2)))
    assert torch.equal(again[3], strong)
