"""The process group of one DDP run: who am I (rank, world size, device), and the few collectives the
training loop needs (gradient averaging, rank-0 state broadcast, metric sums, barriers).

Ranks come from torchrun's variables (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``/``PORT``),
else from SLURM's (``SLURM_PROCID``, ``SLURM_NTASKS``, ``SLURM_LOCALID``; one task per GPU). Without
either, or with a world of one, :func:`init` returns the single-process group, whose collectives do
nothing. Backend: NCCL on CUDA, gloo on CPU (torch.distributed's own advice).
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist

from kdbench.errors import KdbenchError

# A collective that waits longer than this fails the run instead of hanging (a rank died or stalled).
TIMEOUT_S = float(os.environ.get("KDBENCH_DIST_TIMEOUT", "1800"))
BUCKET_BYTES = 25 * 2**20  # gradients are all-reduced in buckets of about this size (DDP's default)
T = TypeVar("T")
# What makes a process think it is one rank of a larger run: the variables read below (torchrun's and SLURM's)
# and the rest of torchrun's per-worker set. A child the local executor starts must not inherit them from an
# srun/sbatch step or a torchrun job it runs in, or it would wait for ranks that never come (see
# ``execute/local/executor.py``'s ``child_environment``); kdbench sets its own for a --nproc run (``train/launch.py``).
RANK_VARIABLES = frozenset(
    {
        "RANK",
        "WORLD_SIZE",
        "LOCAL_RANK",
        "LOCAL_WORLD_SIZE",
        "GROUP_RANK",
        "GROUP_WORLD_SIZE",
        "ROLE_RANK",
        "ROLE_WORLD_SIZE",
        "ROLE_NAME",
        "MASTER_ADDR",
        "MASTER_PORT",
        "SLURM_PROCID",
        "SLURM_NTASKS",
        "SLURM_NPROCS",
        "SLURM_LOCALID",
        "SLURM_NODEID",
        "SLURM_NNODES",
    }
)
RANK_VARIABLE_PREFIXES = ("TORCHELASTIC_",)


def is_rank_variable(name: str) -> bool:
    """Whether environment variable ``name`` places a process in a multi-process run (:data:`RANK_VARIABLES`)."""
    return name in RANK_VARIABLES or name.startswith(RANK_VARIABLE_PREFIXES)


def env_ranks(environ: Mapping[str, str] = os.environ) -> tuple[int, int, int] | None:
    """(rank, world size, local rank) from torchrun's variables, else SLURM's; None when neither is set."""
    if "RANK" in environ and "WORLD_SIZE" in environ:
        return int(environ["RANK"]), int(environ["WORLD_SIZE"]), int(environ.get("LOCAL_RANK", 0))
    if "SLURM_PROCID" in environ and "SLURM_NTASKS" in environ:
        return (
            int(environ["SLURM_PROCID"]),
            int(environ["SLURM_NTASKS"]),
            int(environ.get("SLURM_LOCALID", 0)),
        )
    return None


def local_device(option: str, local_rank: int, local_world: int | None = None) -> torch.device:
    """The device of a rank: its GPU (``cuda:0`` when the launcher shows each task one GPU, else
    ``cuda:LOCAL_RANK``) unless ``option`` is ``cpu`` or there is no CUDA. ``local_world``: the
    processes on this node when known (torchrun's ``LOCAL_WORLD_SIZE``); they must not share a GPU."""
    if option == "cpu" or (option == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if option not in ("auto", "cuda"):
        raise KdbenchError(
            f"--device {option!r} cannot serve several processes: use auto, cuda or cpu (each process "
            f"takes the GPU of its local rank; choose GPUs with CUDA_VISIBLE_DEVICES)."
        )
    if not torch.cuda.is_available():
        raise KdbenchError(
            "--device cuda requested but CUDA is not available on this machine; use --device cpu or auto."
        )
    count = torch.cuda.device_count()
    if local_world is not None and local_world > count:
        raise KdbenchError(
            f"{local_world} processes on this node but {count} GPU(s) visible: start at most {count} "
            f"(--nproc), or pass --device cpu."
        )
    if count > 1 and local_rank >= count:
        raise KdbenchError(
            f"local rank {local_rank} has no GPU: {count} visible; start at most {count} processes per node."
        )
    return torch.device("cuda", 0 if count == 1 else local_rank)


@dataclass(frozen=True)
class Group:
    """This process's place in the run. ``world == 1``: a plain single-process run."""

    rank: int = 0
    world: int = 1
    device: torch.device | None = None  # set for world > 1; a single process resolves its own
    backend: str | None = None

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def shard(self) -> tuple[int, int]:
        """The loaders' ``shard`` argument: (rank, world size)."""
        return self.rank, self.world

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def broadcast_object(self, obj: T) -> T:
        """Rank 0's ``obj`` on every rank (a small picklable value, e.g. a decision)."""
        if not self.active:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def sum(self, values: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Element-wise sums over ranks of same-keyed, same-shaped tensors (metric counts and sums)."""
        if not self.active or not values:
            return values
        names = sorted(values)
        flat = torch.cat([values[k].detach().double().reshape(-1).to(self.device) for k in names])
        dist.all_reduce(flat)
        out, start = {}, 0
        for k in names:
            n = values[k].numel()
            out[k] = flat[start : start + n].view_as(values[k]).to(values[k].dtype)
            start += n
        return out

    def average_gradients(self, parameters: Iterable[torch.nn.Parameter], weight: float) -> None:
        """Every rank's gradients replaced by Σ_r weight_r · grad_r (weight = local / global batch size, so
        the result is the gradient of the global batch's mean loss). Parameters without a gradient are left
        without one; ranks run the same code path, so they agree on which those are (as DDP assumes)."""
        if not self.active:
            return
        grads = [p.grad for p in parameters if p.grad is not None]
        for bucket in _buckets(grads):
            flat = torch.cat([g.reshape(-1) for g in bucket]).mul_(weight)
            dist.all_reduce(flat)
            _unflatten(flat, bucket)

    def broadcast_tensors(self, tensors: Iterable[torch.Tensor]) -> None:
        """Overwrite ``tensors`` (parameters, buffers) with rank 0's values, in place."""
        if not self.active:
            return
        for bucket in _buckets([t.data for t in tensors]):
            flat = torch.cat([t.reshape(-1) for t in bucket])
            dist.broadcast(flat, src=0)
            _unflatten(flat, bucket)

    def check_identical(self, tensors: Iterable[torch.Tensor], what: str) -> None:
        """Raise unless every rank holds exactly the same ``tensors`` (element-wise max == min over ranks)."""
        if not self.active:
            return
        for bucket in _buckets([t.detach() for t in tensors]):
            flat = torch.cat([t.reshape(-1) for t in bucket])
            high, low = flat.clone(), flat.clone()
            dist.all_reduce(high, op=dist.ReduceOp.MAX)
            dist.all_reduce(low, op=dist.ReduceOp.MIN)
            if not torch.equal(high, low):
                raise KdbenchError(
                    f"the {self.world} processes hold different {what}: their updates diverged "
                    f"(a rank computed gradients for other parameters than the rest?)."
                )

    def shutdown(self) -> None:
        if self.active and dist.is_initialized():
            dist.destroy_process_group()


SINGLE = Group()  # the group of a plain single-process run


def init(device: str = "auto", environ: Mapping[str, str] = os.environ) -> Group:
    """Join the run's process group (see the module doc); the single-process group when not launched as DDP."""
    ranks = env_ranks(environ)
    if ranks is None or ranks[1] == 1:
        return SINGLE
    rank, world, local_rank = ranks
    local_world = int(environ["LOCAL_WORLD_SIZE"]) if "LOCAL_WORLD_SIZE" in environ else None
    where = local_device(device, local_rank, local_world)
    backend = "nccl" if where.type == "cuda" else "gloo"
    if where.type == "cuda":
        torch.cuda.set_device(where)
    if (
        "MASTER_ADDR" not in environ
    ):  # srun without torchrun: one node, or the user says where rank 0 is
        if int(environ.get("SLURM_NNODES", 1)) > 1:
            raise KdbenchError(
                "a multi-node SLURM run needs MASTER_ADDR (the first node's address) and MASTER_PORT set."
            )
        os.environ["MASTER_ADDR"] = "127.0.0.1"
        os.environ.setdefault(
            "MASTER_PORT", str(20000 + int(environ.get("SLURM_JOB_ID", 0)) % 20000)
        )
    dist.init_process_group(
        backend,
        init_method="env://",
        rank=rank,
        world_size=world,
        timeout=datetime.timedelta(seconds=TIMEOUT_S),
        device_id=where if where.type == "cuda" else None,
    )
    return Group(rank=rank, world=world, device=where, backend=backend)


def _buckets(tensors: list[torch.Tensor]) -> Iterable[list[torch.Tensor]]:
    """Consecutive groups of same-dtype, same-device tensors of about ``BUCKET_BYTES`` each."""
    bucket: list[torch.Tensor] = []
    size = 0
    for t in tensors:
        if bucket and (
            size + t.numel() * t.element_size() > BUCKET_BYTES
            or t.dtype != bucket[0].dtype
            or t.device != bucket[0].device
        ):
            yield bucket
            bucket, size = [], 0
        bucket.append(t)
        size += t.numel() * t.element_size()
    if bucket:
        yield bucket


def _unflatten(flat: torch.Tensor, tensors: list[torch.Tensor]) -> None:
    start = 0
    for t in tensors:
        t.copy_(flat[start : start + t.numel()].view_as(t))
        start += t.numel()
