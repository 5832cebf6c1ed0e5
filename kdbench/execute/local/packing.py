"""How many runs share one GPU (``--runs-per-gpu auto``): a conservative memory estimate per run.

A batch-64 CIFAR run uses a few GB of an 80 GB GPU and is launch-bound (docs/references.md §Performance notes),
so several processes per GPU raise throughput. The estimate per run, in bytes:

    16·P_student  (fp32 weights, gradients, momentum, and one spare copy for compiled graphs)
  +  4·P_teacher  (frozen fp32 weights)
  +  8·B·A_student (fp32 activations kept for backward, and as much again for their gradients)
  +  4·B·A_teacher (the teacher's transient fp32 activations)
  +  dataset       (in-memory datasets: the tensor loader's resident uint8 splits, train padded by 4)
  +  teacher cache (a cacheable method's epoch logits, N·C·4, unless --teacher-cache off; the whole table,
                   N·(2p+1)²·2·C·4, stays in host memory, shared by the runs: train/teacher_cache.py)
  +  method state  (per-sample state: CRD's two N·D fp32 memory banks and its B·N sampling keys, mask and scores)
  +  CONTEXT_BYTES + WORKSPACE_BYTES (CUDA context and allocator caching; cuDNN/cuBLAS and Inductor workspaces)

with P the parameter counts, B the batch size and A the activation elements one image writes in a
forward pass (counted on the meta device). The dataset and the cache are counted whenever the run may
hold them on the GPU: a process decides on the dataset alone at load time against the memory it sees free
then (``data/loaders/factory.py``), and packed runs that start together all see an empty GPU.
Runs per GPU = ⌊USABLE_SHARE · free memory / max run⌋, clamped to [1, MAX_RUNS_PER_GPU]. bf16 halves the
activations; the estimate ignores it on purpose.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

CONTEXT_BYTES = 1 << 30
WORKSPACE_BYTES = 1 << 29
USABLE_SHARE = 0.8
MAX_RUNS_PER_GPU = 8
# CRD's per-step transients per (sample, training image) pair: float64 sampling keys (8), the other-class
# mask (1), and the (B, N) scores of both anchors with their gradients (2 · (4 + 4)); methods/crd.py.
SAMPLE_PAIR_BYTES = 8 + 1 + 2 * (4 + 4)


@dataclass(frozen=True)
class Footprint:
    """What one run keeps on the GPU: parameters, activation elements per image, and resident buffers in bytes."""

    student_params: int
    teacher_params: int
    student_activations: int
    teacher_activations: int
    batch_size: int
    dataset_bytes: int = 0
    teacher_cache_bytes: int = 0
    method_bytes: int = 0


def run_bytes(fp: Footprint) -> int:
    """The conservative GPU memory estimate of one run (formula in the module docstring)."""
    return (
        16 * fp.student_params
        + 4 * fp.teacher_params
        + fp.batch_size * (8 * fp.student_activations + 4 * fp.teacher_activations)
        + fp.dataset_bytes
        + fp.teacher_cache_bytes
        + fp.method_bytes
        + CONTEXT_BYTES
        + WORKSPACE_BYTES
    )


def runs_per_gpu(free_bytes: int, per_run_bytes: int, max_runs: int = MAX_RUNS_PER_GPU) -> int:
    """How many runs of ``per_run_bytes`` fit in ``USABLE_SHARE`` of ``free_bytes`` (at least 1, at most ``max_runs``)."""
    return max(1, min(max_runs, int(USABLE_SHARE * free_bytes) // max(per_run_bytes, 1)))


def model_size(name: str, num_classes: int, image_size: int) -> tuple[int, int]:
    """(parameters, activation elements written per image by one forward pass) of model ``name``."""
    from kdbench import models

    with torch.device("meta"):
        model = models.create(name, num_classes=num_classes)
    elements = 0

    def count(module: nn.Module, args: object, output: object) -> None:
        nonlocal elements
        if isinstance(output, torch.Tensor):
            elements += output.numel()

    leaves = [m for m in model.modules() if not list(m.children())]
    hooks = [m.register_forward_hook(count) for m in leaves]
    try:
        model(torch.empty(1, 3, image_size, image_size, device="meta"))
    finally:
        for hook in hooks:
            hook.remove()
    return sum(p.numel() for p in model.parameters()), elements


def footprint(spec, teacher_cache: str = "auto") -> Footprint:
    """The :class:`Footprint` of a :class:`~kdbench.plan.RunSpec` trained with ``--teacher-cache teacher_cache``."""
    from kdbench import methods
    from kdbench.cost import dataset_sizes, network_geometry
    from kdbench.data.loaders.tensor_arrays import TRAIN_PADDING
    from kdbench.data.registry import dataset_info

    classes, size = network_geometry(spec)
    student = model_size(spec.model, classes, size)
    teacher = model_size(spec.teacher.model, classes, size) if spec.teacher is not None else (0, 0)
    sizes = (
        None if dataset_info(spec.data.name).kind == "folder" else dataset_sizes(spec.data)
    )  # image folders stay on the host
    dataset = cache = state = 0
    if sizes is not None:
        train, test = sizes
        dataset = train * 3 * (size + 2 * TRAIN_PADDING) ** 2 + test * 3 * size**2
        method = methods.get(spec.method)
        if teacher_cache != "off" and spec.teacher is not None and method.needs.cacheable_teacher:
            cache = 4 * train * classes
        if method.needs.sample_indices:
            dim = getattr(method.Params(**spec.method_params), "feat_dim", 0)
            state = 2 * 4 * train * dim + spec.train.batch_size * train * SAMPLE_PAIR_BYTES
    return Footprint(
        student[0], teacher[0], student[1], teacher[1], spec.train.batch_size, dataset, cache, state
    )


def auto_runs_per_gpu(specs: Iterable, free_bytes: int, teacher_cache: str = "auto") -> int:
    """Runs per GPU with ``free_bytes`` free (``execute/local/gpus.py`` reads it) for ``specs``: sized for the largest run."""
    largest = max((run_bytes(footprint(s, teacher_cache)) for s in specs), default=CONTEXT_BYTES)
    return runs_per_gpu(free_bytes, largest)
