"""How many runs share one GPU (``--runs-per-gpu auto``): a conservative memory estimate per run.

A batch-64 CIFAR run uses a few GB of an 80 GB GPU and is launch-bound (specs/performance.md §3.2),
so several processes per GPU raise throughput. The estimate per run, in bytes:

    16·P_student  (fp32 weights, gradients, momentum, and one spare copy for compiled graphs)
  +  4·P_teacher  (frozen fp32 weights)
  +  8·B·A_student (fp32 activations kept for backward, and as much again for their gradients)
  +  4·B·A_teacher (the teacher's transient fp32 activations)
  +  CONTEXT_BYTES (CUDA context, allocator caching and fragmentation)

with P the parameter counts, B the batch size and A the activation elements one image writes in a
forward pass (counted on the meta device). Runs per GPU = ⌊USABLE_SHARE · free memory / max run⌋,
clamped to [1, MAX_RUNS_PER_GPU]. bf16 halves the activations; the estimate ignores it on purpose.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

CONTEXT_BYTES = 1 << 30
USABLE_SHARE = 0.8
MAX_RUNS_PER_GPU = 8


@dataclass(frozen=True)
class Footprint:
    """What one run keeps on the GPU, in parameters and activation elements per image."""

    student_params: int
    teacher_params: int
    student_activations: int
    teacher_activations: int
    batch_size: int


def run_bytes(fp: Footprint) -> int:
    """The conservative GPU memory estimate of one run (formula in the module docstring)."""
    return (16 * fp.student_params + 4 * fp.teacher_params
            + fp.batch_size * (8 * fp.student_activations + 4 * fp.teacher_activations) + CONTEXT_BYTES)


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


def footprint(spec) -> Footprint:
    """The :class:`Footprint` of a :class:`~kdbench.plan.RunSpec`."""
    from kdbench.cost import network_geometry

    classes, size = network_geometry(spec)
    student = model_size(spec.model, classes, size)
    teacher = model_size(spec.teacher.model, classes, size) if spec.teacher is not None else (0, 0)
    return Footprint(student[0], teacher[0], student[1], teacher[1], spec.train.batch_size)


def auto_runs_per_gpu(specs: Iterable, gpu: int) -> int:
    """Runs per GPU ``gpu`` for ``specs``: sized for the largest run, from the GPU's free memory now."""
    largest = max((run_bytes(footprint(s)) for s in specs), default=CONTEXT_BYTES)
    return runs_per_gpu(torch.cuda.mem_get_info(gpu)[0], largest)
