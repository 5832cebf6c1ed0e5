"""One rank's share of every global batch (DDP): rank r of w takes the contiguous slice
[⌊r·n/w⌋, ⌊(r+1)·n/w⌋) of each global batch of n samples (n = the batch size except for a last,
smaller batch). Every loader kind cuts its local batches from the order this module returns, so
the union of the ranks' batches at each step is exactly the single-process batch.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from kdbench.data.augment.epoch_plan import EpochPlan
from kdbench.errors import KdbenchError

Shard = tuple[int, int]  # (rank, world size)
WHOLE: Shard = (0, 1)


def check_shard(shard: Shard, batch_size: int) -> None:
    """Raise a clear error unless ``shard`` is a valid (rank, world) and ``batch_size`` splits evenly over it."""
    rank, world = shard
    if world < 1 or not 0 <= rank < world:
        raise KdbenchError(
            f"invalid shard (rank {rank}, world size {world}): need 0 <= rank < world."
        )
    if batch_size % world:
        raise KdbenchError(
            f"batch size {batch_size} does not split over {world} processes; use a process count "
            f"that divides it (the global batch is the spec's batch size, held constant)."
        )


def slice_bounds(n: int, shard: Shard) -> tuple[int, int]:
    """Rank ``shard[0]``'s slice [start, stop) of a global batch of ``n`` samples."""
    rank, world = shard
    return n * rank // world, n * (rank + 1) // world


def global_batch_sizes(
    num_samples: int, batch_size: int, drop_last: bool, world: int = 1
) -> list[int]:
    """Sizes of an epoch's global batches. With more than one rank a last batch smaller than ``world``
    is dropped as well: every rank must take the same number of optimizer steps."""
    sizes = [batch_size] * (num_samples // batch_size)
    last = num_samples % batch_size
    if last and not drop_last and not (world > 1 and last < world):
        sizes.append(last)
    return sizes


def local_order(
    order: torch.Tensor, batch_size: int, shard: Shard, *, drop_last: bool, train: bool = True
) -> torch.Tensor:
    """The visiting order of rank ``shard[0]``: its slice of every global batch of ``order``, concatenated.

    Cut into batches of ``batch_size // world`` it gives exactly the rank's local batches (only the
    last one can be smaller). ``train``: every rank must get the same number of batches, so a last
    global batch smaller than the world size is dropped; test batches keep it (a rank may get one
    batch fewer, which evaluation allows)."""
    check_shard(shard, batch_size)
    sizes = global_batch_sizes(len(order), batch_size, drop_last, shard[1] if train else 1)
    parts = []
    for k, n in enumerate(sizes):
        start, stop = slice_bounds(n, shard)
        parts.append(order[k * batch_size + start : k * batch_size + stop])
    return torch.cat(parts) if parts else order[:0]


def shard_plan(
    plan: EpochPlan, batch_size: int, shard: Shard, drop_last: bool, *, train: bool = True
) -> tuple[EpochPlan, int, bool]:
    """(plan, batch size, drop_last) for a loader of rank ``shard[0]``: unchanged for the whole batch, else
    the plan visiting the rank's local order, the local batch size, and no further dropping."""
    if shard == WHOLE:
        return plan, batch_size, drop_last
    order = local_order(plan.order, batch_size, shard, drop_last=drop_last, train=train)
    return replace(plan, order=order), batch_size // shard[1], False
