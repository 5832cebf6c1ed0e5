"""The fp32 boundary, for every registered method: under bf16 autocast every network pass (student, teacher, the
method's own connectors/projectors/embeddings, MLKD's strong view) computes in bf16, and every loss term, of the
main step and of the pre-training stages (AB, FT, FSP), is float32 and finite.

CPU autocast stands in for CUDA's: its op lists differ, but convolutions and linear layers are bf16 on both, and
the losses' boundary (kdbench/losses/precision.py) does not depend on the op lists.
"""

from __future__ import annotations

import copy
import inspect

import pytest
import torch
from kdbench import losses, methods, models
from kdbench.losses import contrastive, feature, logit, relation
from torch import nn

from reference import calibrated_teacher

NUM_CLASSES = 10
BATCH = 8
NETWORK_LAYERS = (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)


@pytest.fixture(scope="module")
def teacher_template() -> models.KDModel:
    return calibrated_teacher("resnet8", NUM_CLASSES)


def build(name: str, teacher_template: models.KDModel) -> methods.Distiller:
    cls = methods.get(name)
    torch.manual_seed(2)
    student = models.create("resnet8", num_classes=NUM_CLASSES)
    teacher = copy.deepcopy(teacher_template) if cls.needs.teacher else None
    context: dict = {"batch_size": BATCH}
    if cls.needs.sample_indices:
        context["train_labels"] = torch.arange(64) % NUM_CLASSES
    return cls(student, teacher, cls.Params(), torch.randn(4, 3, 32, 32), **context)


class LayerDtypes:
    """Forward hooks on every conv and linear layer of ``module``: the dtype of each output, by layer name."""

    def __init__(self, module: nn.Module):
        self.seen: dict[str, set[torch.dtype]] = {}
        self.handles = [
            m.register_forward_hook(self._hook(name))
            for name, m in module.named_modules()
            if isinstance(m, NETWORK_LAYERS)
        ]

    def _hook(self, name: str):
        def record(module: nn.Module, inputs: object, output: torch.Tensor) -> None:
            self.seen.setdefault(name, set()).add(output.dtype)

        return record

    def not_bf16(self) -> dict[str, set[torch.dtype]]:
        return {name: dtypes for name, dtypes in self.seen.items() if dtypes != {torch.bfloat16}}

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()


def batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(BATCH, 3, 32, 32, generator=generator)
    strong = torch.flip(images, dims=[3]) + 0.1 * torch.randn(images.shape, generator=generator)
    return images, torch.arange(BATCH) % NUM_CLASSES, torch.arange(BATCH), strong


def check_terms(terms: dict[str, torch.Tensor]) -> None:
    assert terms, "no loss terms"
    for name, value in terms.items():
        assert value.dtype == torch.float32, f"term {name} is {value.dtype}"
        assert torch.isfinite(value).all(), f"term {name} is not finite: {value}"
    sum(terms.values()).backward()  # the mixed bf16/fp32 graph differentiates


@pytest.mark.parametrize("name", methods.names())
def test_every_term_is_fp32_and_every_network_pass_bf16_under_autocast(name, teacher_template):
    d = build(name, teacher_template)
    d.train()
    images, targets, indices, strong = batch()
    layers = LayerDtypes(d)
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            _, terms = d.forward_train(
                images, targets, 1, indices, strong if d.needs.strong_view else None
            )
    finally:
        layers.close()
    check_terms(terms)
    assert layers.not_bf16() == {}, "network layers that left autocast"
    student_layers = {n for n in layers.seen if n.startswith("student.")}
    assert len(student_layers) == sum(
        isinstance(m, NETWORK_LAYERS) for m in d.student.modules()
    )  # all of it ran


def test_mlkd_strong_view_passes_run_under_autocast(teacher_template):
    """MLKD's strong view goes through both networks a second time (mlkd.py): those passes are bf16 too."""
    d = build("mlkd", teacher_template)
    images, targets, indices, strong = batch()
    calls: dict[str, list[torch.dtype]] = {"student": [], "teacher": []}
    hooks = [
        getattr(d, side).classifier.register_forward_hook(
            lambda m, i, o, side=side: calls[side].append(o.dtype)
        )
        for side in calls
    ]
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            d.forward_train(images, targets, 1, indices, strong)
    finally:
        for hook in hooks:
            hook.remove()
    assert calls == {
        "student": [torch.bfloat16] * 2,
        "teacher": [torch.bfloat16] * 2,
    }  # weak view, then strong


INIT_METHODS = [
    n for n in methods.names() if methods.get(n).init_stage is not methods.Distiller.init_stage
]


def test_the_pre_training_methods_are_found():
    assert {"ab", "ft", "fsp"} <= set(INIT_METHODS)


@pytest.mark.parametrize("name", INIT_METHODS)
def test_pre_training_terms_are_fp32_and_its_network_passes_bf16(name, teacher_template):
    d = build(name, teacher_template)
    assert d.init_stage() is not None
    d.train()
    images, targets, _, _ = batch()
    layers = LayerDtypes(d)
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            terms = d.forward_init(images, targets)
    finally:
        layers.close()
    check_terms(terms)
    assert layers.seen and layers.not_bf16() == {}, "network layers that left autocast"


def test_forward_train_without_autocast_stays_fp32(teacher_template):
    d = build("fitnet", teacher_template)
    images, targets, indices, _ = batch()
    layers = LayerDtypes(d)
    try:
        _, terms = d.forward_train(images, targets, 1, indices)
    finally:
        layers.close()
    assert all(v.dtype == torch.float32 for v in terms.values())
    assert {dtype for dtypes in layers.seen.values() for dtype in dtypes} == {torch.float32}


def test_every_public_loss_is_behind_the_fp32_boundary():
    """Every function ``kdbench.losses`` exports carries :func:`~kdbench.losses.precision.fp32`."""
    exported = [
        name for module in (contrastive, feature, logit, relation) for name in module.__all__
    ]
    assert len(exported) > 25
    unguarded = [
        name for name in exported if not getattr(getattr(losses, name), "fp32_boundary", False)
    ]
    assert unguarded == []


def test_the_boundary_upcasts_inputs_and_turns_autocast_off():
    a = torch.randn(4, 10).to(torch.bfloat16)
    b = torch.randn(4, 10)
    seen = {}

    @losses.precision.fp32
    def probe(
        x: torch.Tensor, pair: list[torch.Tensor], labels: torch.Tensor, scale: float
    ) -> torch.Tensor:
        seen.update(
            x=x.dtype,
            pair=[p.dtype for p in pair],
            labels=labels.dtype,
            autocast=torch.is_autocast_enabled("cpu"),
        )
        return (x @ pair[1].T).sum() * scale  # a matmul: bf16 if autocast were still on

    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = probe(a, [a, b], torch.arange(4), 2.0)
    assert out.dtype == torch.float32
    assert seen == {
        "x": torch.float32,
        "pair": [torch.float32, torch.float32],
        "labels": torch.int64,
        "autocast": False,
    }
    assert inspect.signature(probe).parameters.keys() == {
        "x",
        "pair",
        "labels",
        "scale",
    }  # functools.wraps


def test_the_boundary_keeps_float64():
    x = torch.randn(3, 5, dtype=torch.float64)
    assert losses.kd(x, x.flip(0), 4.0).dtype == torch.float64
