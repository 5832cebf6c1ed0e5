"""Per-epoch randomness drawn up front (``EpochPlan``) and the per-sample CIFAR augmentation it drives."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from kdbench.errors import KdbenchError


@dataclass(frozen=True)
class EpochPlan:
    """All random choices of one epoch.

    ``order`` is the visiting order (an int64 permutation of the sample indices). ``offsets[i] = (dx, dy)`` and
    ``flips[i]`` belong to sample ``i``: crop the image zero-padded by ``padding`` at column dx, row dy
    (both in [0, 2*padding]), then mirror it left-right if the flip bit is set.
    """

    order: torch.Tensor
    offsets: torch.Tensor
    flips: torch.Tensor
    padding: int


def epoch_plan(
    num_samples: int,
    seed: int,
    epoch: int,
    *,
    shuffle: bool = True,
    augment: bool = True,
    padding: int = 4,
) -> EpochPlan:
    """Draw an epoch's order, crop offsets and flips from a generator seeded by (seed, epoch) alone.

    The three draws always happen, in that order, so each one depends only on (seed, epoch, num_samples,
    padding): turning ``shuffle`` or ``augment`` off replaces its part with the identity (in order; centre
    crop, no flip) and leaves the other part unchanged.
    """
    if seed < 0 or epoch < 0 or padding < 0 or num_samples < 0:
        raise KdbenchError(
            f"epoch_plan needs non-negative num_samples, seed, epoch and padding; got "
            f"{num_samples}, {seed}, {epoch}, {padding}"
        )
    state = np.random.SeedSequence([seed, epoch]).generate_state(1, dtype=np.uint64)[0]
    generator = torch.Generator().manual_seed(int(state))
    order = torch.randperm(num_samples, generator=generator)
    offsets = torch.randint(0, 2 * padding + 1, (num_samples, 2), generator=generator)
    flips = torch.randint(0, 2, (num_samples,), generator=generator).bool()
    if not shuffle:
        order = torch.arange(num_samples)
    if not augment:
        offsets, flips = torch.full_like(offsets, padding), torch.zeros_like(flips)
    return EpochPlan(order=order, offsets=offsets, flips=flips, padding=padding)


def crop_and_flip(image: np.ndarray, dx: int, dy: int, flip: bool, padding: int) -> np.ndarray:
    """One (H,W,C) image zero-padded by ``padding``, cropped back to (H,W) at column dx / row dy, maybe mirrored."""
    height, width = image.shape[:2]
    if padding:
        image = np.pad(image, ((padding, padding), (padding, padding), (0, 0)))[
            dy : dy + height, dx : dx + width
        ]
    return image[:, ::-1] if flip else image


def to_normalized_tensor(image: np.ndarray, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 (H,W,C) -> float32 (C,H,W): scale to [0, 1], subtract ``mean`` and divide by ``std`` (shape (C,1,1))."""
    tensor = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).to(torch.float32)
    return tensor.div_(255.0).sub_(mean).div_(std)
