"""Two methods trained together, named ``first+second`` in recipes (e.g. ``rkd+mlkd``).

The MLKD and IPWD papers report such combinations (RKD+MLKD, ReviewKD+MLKD, ReviewKD+IPWD) without
code, so their weighting is unknown (docs/references.md §MLKD). kdbench's default:
the first method's whole loss (its CE/KD and its own terms, its prediction) plus the second
method's own terms unchanged (named ``<second>_<term>``; not its CE/KD, which would count CE
twice). The combination has the needs of both; the second method's parameters sit under
``second`` in the row's params.
"""

from __future__ import annotations

import torch
from pydantic import create_model

from kdbench.methods.base import Distiller, MethodParams, Needs, Step, Variant
from kdbench.models.base import Features, KDModel


def _merge_needs(a: Needs, b: Needs) -> Needs:
    return Needs(
        teacher=a.teacher or b.teacher,
        teacher_logits_only=a.teacher_logits_only and b.teacher_logits_only,
        sample_indices=a.sample_indices or b.sample_indices,
        strong_view=a.strong_view or b.strong_view,
        fixed_batch=a.fixed_batch or b.fixed_batch,
        batch_dependent_loss=a.batch_dependent_loss or b.batch_dependent_loss,
    )


_COMBINATIONS: dict[tuple[type[Distiller], type[Distiller]], type[Distiller]] = {}


def combine(first: type[Distiller], second: type[Distiller]) -> type[Distiller]:
    """The Distiller class of ``first+second`` (cached, so each combination is one class)."""
    key = (first, second)
    if key not in _COMBINATIONS:
        _COMBINATIONS[key] = _combination(first, second)
    return _COMBINATIONS[key]


def _combination(first: type[Distiller], second: type[Distiller]) -> type[Distiller]:
    """A new Distiller class of ``first+second``."""
    params_model = create_model(
        f"{first.Params.__name__}Plus{second.Params.__name__}",
        __base__=first.Params,
        second=(second.Params, second.Params()),
    )

    class Combination(first):  # type: ignore[valid-type, misc]
        name = f"{first.name}+{second.name}"
        title = f"{first.title} + {second.title}"
        paper = f"{first.paper}; combined with {second.paper}"
        Params = params_model
        needs = _merge_needs(first.needs, second.needs)
        variants: dict[str, Variant] = {}

        def __init__(
            self,
            student: KDModel,
            teacher: KDModel | None,
            params: MethodParams,
            example: torch.Tensor,
            **context,
        ):
            super().__init__(student, teacher, params, example, **context)
            if not second.needs.batch_dependent_loss:
                context.pop("loss_chunk", None)
            # params is a params_model, whose ``second`` field create_model adds out of the checker's sight
            second_params = params.second  # type: ignore[attr-defined]
            self.second = second(student, teacher, second_params, example, **context)
            # The second method shares this one's networks: keep them out of its module tree so
            # they are registered (optimised, saved) once, under this distiller. ``del`` unregisters
            # a child module; object.__setattr__ keeps it as a plain attribute, outside the tree.
            for shared in ("student", "teacher"):
                network = getattr(self.second, shared)
                delattr(self.second, shared)
                object.__setattr__(self.second, shared, network)

        def distill(
            self, student: Features, teacher: Features | None, step: Step
        ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
            logits, terms = super().distill(student, teacher, step)
            _, extra = self.second.distill(student, teacher, step)
            return logits, {**terms, **{f"{second.name}_{k}": v for k, v in extra.items()}}

    Combination.__name__ = Combination.__qualname__ = f"{first.__name__}Plus{second.__name__}"
    return Combination
