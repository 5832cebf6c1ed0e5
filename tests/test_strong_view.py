"""MLKD's strong view: deterministic per (seed, epoch, sample), the specified op distribution, Cutout."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
import torch.utils._pytree as pytree
from kdbench import data
from kdbench.data.augment import strong_batched
from kdbench.data.augment.strong import (
    CUTOUT_FILL,
    OPS,
    StrongDraw,
    _magnitude,
    apply,
    draw,
    sample_rng,
    strong_view,
)
from kdbench.data.loaders.tensor_arrays import crop_flip
from PIL import Image
from torch.utils._python_dispatch import TorchDispatchMode


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
    monkeypatch.setattr("kdbench.data.augment.strong.OPS", tuple(wrapped))
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
    """The strong view's Cutout: a square of side U(0, width / 2) centred uniformly (``draw``), clipped, filled
    (``apply``; here with no crop shift, flip or op, so only the Cutout changes pixels)."""
    rng = sample_rng(0, 0, 0)
    filled = []
    for _ in range(200):
        view = apply(image, StrongDraw(4, 4, False, (), (), draw(rng, 32, 32).cutout))
        filled.append(np.all(view == CUTOUT_FILL, axis=2).sum())
    assert max(filled) > 0 and max(filled) <= (16 + 1) ** 2
    assert np.mean(filled) > 20  # side ~ U(0, 16): mean area well above zero


def test_loader_adds_the_strong_view_as_a_fourth_element():
    arrays = data.load_dataset("synthetic", train_size=40, test_size=8, num_classes=4)
    plain = next(iter(data.train_loader(arrays, 8, seed=0, epoch=1)))
    weak, labels, indices, strong = next(
        iter(data.train_loader(arrays, 8, seed=0, epoch=1, strong=True))
    )
    assert len(plain) == 3 and torch.equal(plain[0], weak) and torch.equal(plain[2], indices)
    assert strong.shape == weak.shape and not torch.equal(strong, weak)
    again = next(iter(data.train_loader(arrays, 8, seed=0, epoch=1, strong=True, num_workers=2)))
    assert torch.equal(again[3], strong)


# ---------------------------------------------------------------- batched on the device (data/augment/strong_batched.py)


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    """Noise, low-contrast, flat and two-valued images: the histogram ops' edge cases (one value, gaps, a full range)."""
    rng = np.random.default_rng(5)
    noise = (rng.random((24, 32, 32, 3)) * 256).astype(np.uint8)
    low = (rng.random((16, 32, 32, 3)) * 30 + 110).astype(np.uint8)
    flat = np.full((4, 32, 32, 3), 77, dtype=np.uint8)
    two = np.where(rng.random((4, 32, 32, 3)) < 0.3, 250, 3).astype(np.uint8)
    smooth = np.broadcast_to(
        np.linspace(0, 255, 32, dtype=np.uint8)[None, :, None, None], (4, 32, 32, 3)
    )
    return np.concatenate(
        [noise, low, flat, two, np.ascontiguousarray(smooth.transpose(0, 2, 1, 3))]
    )


@pytest.mark.parametrize("name,op,low,high", OPS, ids=[o[0] for o in OPS])
def test_every_batched_op_equals_pil_pixel_for_pixel(images, name, op, low, high):
    rng = np.random.default_rng(1)
    magnitudes = [_magnitude(rng, name, low, high) for _ in images]
    magnitudes[:2] = [
        float(low),
        float(high) - (name in ("Posterize", "Solarize")),
    ]  # both ends of the range
    expected = np.stack(
        [np.asarray(op(Image.fromarray(im), m)) for im, m in zip(images, magnitudes)]
    )
    got = strong_batched.apply_op(
        name, torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), magnitudes
    )
    np.testing.assert_array_equal(got.permute(0, 2, 3, 1).numpy(), expected, err_msg=name)


def test_batched_strong_views_equal_the_reference_views(images):
    """Whole views (crop, flip, two ops, Cutout) from the same per-sample decisions, 300 draws."""
    padded = (
        torch.from_numpy(np.pad(images, ((0, 0), (4, 4), (4, 4), (0, 0))))
        .permute(0, 3, 1, 2)
        .contiguous()
    )
    positions = torch.arange(len(images)).repeat(6)
    decisions = strong_batched.draws(3, 7, range(len(positions)), 32, 32, 4)
    offsets = torch.tensor([(d.dx, d.dy) for d in decisions])
    flips = torch.tensor([d.flip for d in decisions])
    cropped = crop_flip(padded, positions, offsets, flips, 4)
    got = strong_batched.strong_views(cropped, decisions).permute(0, 2, 3, 1).numpy()
    expected = np.stack([apply(images[int(p)], d) for p, d in zip(positions, decisions)])
    np.testing.assert_array_equal(got, expected)
    assert {op for d in decisions for op in d.ops} == set(range(len(OPS)))  # every op was exercised
    assert (
        strong_view(images[0], sample_rng(3, 7, 0)).tobytes() == expected[0].tobytes()
    )  # the same decisions


def test_cutout_box_is_filled_corners_included():
    x = torch.zeros(2, 3, 8, 8, dtype=torch.uint8)
    out = strong_batched.cutout(x, [(0, 0, 0, 0), (6, 5, 8, 8)])
    assert (out[0, :, 0, 0] == torch.tensor(CUTOUT_FILL, dtype=torch.uint8)).all() and int(
        (out[0, 0] > 0).sum()
    ) == 1
    assert int((out[1, 0] > 0).sum()) == 2 * 3  # columns 6-7, rows 5-7: clipped at the image's edge


class _HostTraffic(TorchDispatchMode):
    """Counts what would stall a GPU stream: reads of device values on the host (``.item()``, ``bool(t)``) and
    copies of host data to the device (here the "meta" device, which has no values to read at all)."""

    def __init__(self) -> None:
        super().__init__()
        self.reads, self.copies = 0, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = [a for a in pytree.tree_leaves((args, kwargs)) if isinstance(a, torch.Tensor)]
        outputs = [o for o in pytree.tree_leaves(out) if isinstance(o, torch.Tensor)]
        if func is torch.ops.aten._local_scalar_dense.default:
            self.reads += 1
        elif func is torch.ops.aten.lift_fresh.default and any(
            o.device.type == "meta" for o in outputs
        ):
            self.copies += 1  # torch.tensor(host values, device=...)
        elif any(i.device.type == "cpu" for i in inputs) and any(
            o.device.type == "meta" for o in outputs
        ):
            self.copies += 1
        return out


def test_a_batch_of_strong_views_sends_its_numbers_in_one_copy_and_reads_nothing_back(images):
    """One batch of 64 strong views draws ~14 ops in each of 2 slots: it used to make about 30 blocking host-to-device
    copies (each a stream sync on CUDA); now the batch's numbers travel in one copy, and nothing is read back."""
    decisions = strong_batched.draws(3, 7, range(64), 32, 32, 4)
    x = (
        torch.from_numpy(images[:1])
        .permute(0, 3, 1, 2)
        .expand(64, -1, -1, -1)
        .contiguous()
        .to("meta")
    )
    with _HostTraffic() as traffic:
        out = strong_batched.strong_views(x, decisions)
    assert out.shape == x.shape and out.device.type == "meta"
    assert len({op for d in decisions for op in d.ops}) >= 10  # most ops drawn
    assert (traffic.reads, traffic.copies) == (0, 1)
