"""Per-cell numbers a table prints besides accuracy (``Recipe.quantities``).

Measured ones come from the runs (a test-set loss term, mean ± std over trials, e.g. SimKD Table 5's
"Test loss (ℓ2)"). Computed ones come from the networks alone, with no training: SimKD's pruning-ratio
cost and projector-to-student parameter ratio (Eq. 6, Tables S.8/S.9), from the exact parameter counts
of the student, the teacher and the method's inference modules.
"""

from __future__ import annotations

import math
from functools import lru_cache

import pandas as pd
import torch

from kdbench import methods, models
from kdbench.data import dataset_info, load_arrays
from kdbench.errors import KdbenchError
from kdbench.plan import RunSpec
from kdbench.recipe import Quantity

COMPUTED = ("pruning_cost", "added_params_ratio")


def measured(quantity: Quantity, runs: pd.DataFrame, metric: str) -> list[float]:
    """The quantity's value in each finished run of ``runs`` (at the best or the last epoch)."""
    values = []
    for losses in runs["test_losses"]:
        term = (losses or {}).get(quantity.term)
        if term is not None:
            values.append(float(term[metric]))
    return values


def computed(quantity: Quantity, spec: RunSpec) -> float:
    """A network-derived quantity of ``spec``'s trained prediction, in %."""
    student, teacher, size = _sizes(
        spec.model,
        spec.teacher.model if spec.teacher else None,
        spec.method,
        tuple(sorted(spec.method_params.items())),
        *geometry(spec),
    )
    if quantity.source == "pruning_cost":
        if teacher is None:
            raise KdbenchError(f"{spec.method} has no teacher: a pruning ratio needs one")
        # Pruning ratio = 1 − #inference/#teacher (Eq. 6); its cost against the plain student (1 − #student/#teacher).
        return 100.0 * (size.total - student) / teacher
    return 100.0 * size.added / student


def geometry(spec: RunSpec) -> tuple[int, int]:
    """(number of classes, image side) of the run's dataset: its ``DatasetInfo``, else read from the data."""
    info = dataset_info(spec.data.name)
    options = info.options(spec.data.options)
    classes, side = info.num_classes(options), info.image_size(options)
    if classes is not None and side is not None:
        return classes, side
    dataset = load_arrays(spec.data.name, **spec.data.options)
    return dataset.num_classes, int(dataset.x_train.shape[1])


@lru_cache(maxsize=256)
def _sizes(
    student_name: str,
    teacher_name: str | None,
    method: str,
    params: tuple,
    num_classes: int,
    image_size: int,
) -> tuple[int, int | None, methods.InferenceSize]:
    """(#student, #teacher, the method's inference size), building the networks on the CPU."""
    student = models.create(student_name, num_classes=num_classes)
    teacher = models.create(teacher_name, num_classes=num_classes) if teacher_name else None
    cls = methods.get(method)
    example = torch.zeros(2, 3, image_size, image_size)
    with torch.no_grad():
        distiller = cls(
            student,
            teacher,
            cls.Params(**dict(params)),
            example,
            train_labels=torch.zeros(2, dtype=torch.long),
            batch_size=2,
        )
    n_teacher = methods.parameter_count(teacher) if teacher is not None else None
    return methods.parameter_count(student), n_teacher, distiller.inference_size()


def is_close(ours: float, paper: float, decimals: int | None) -> bool:
    """Equal at the paper's printed precision: within half a unit of its last printed digit (2 if unknown)."""
    return (
        not math.isnan(ours)
        and abs(ours - paper) <= 0.5 * 10.0 ** -(2 if decimals is None else decimals) + 1e-9
    )
