"""Distillation methods: the registry-driven contract every method meets, and method specifics.

Every test that trains or builds a distiller uses a fresh copy of one ResNet-32x4 teacher whose BN
running statistics were calibrated on random images (an uncalibrated random net in eval mode has
exploding activations), 10 classes and 32×32 inputs. Targets are the teacher's own predictions, so
the CE and the distillation terms pull the same way and a few SGD steps on one fixed batch must
lower the summed loss for every method.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import pydantic
import pytest
import torch
from kdbench import losses, methods, models
from kdbench.errors import UnknownNameError
from kdbench.methods import Distiller
from kdbench.train.options import RunOptions
from torch import nn

from reference import calibrated_teacher

NUM_CLASSES = 10
BATCH = 8
TEACHER = "resnet32x4"
STUDENTS = ["resnet8x4", "ShuffleV2"]  # two families: CIFAR ResNet and ShuffleNetV2
STEPS = 5
METHODS = methods.names()
# Modules trained only in a method's init stage (tests/test_losses_twostage.py checks they stay fixed after).
INIT_ONLY_MODULES = {"ab": ("connectors",), "ft": ("paraphraser",)}


@pytest.fixture(scope="module")
def teacher_template() -> models.KDModel:
    """A random ResNet-32x4 with BN running stats calibrated on random images, in eval mode."""
    return calibrated_teacher(TEACHER, NUM_CLASSES)


@pytest.fixture(scope="module")
def batch(teacher_template) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(1)
    images = torch.randn(BATCH, 3, 32, 32)
    with torch.no_grad():
        targets = teacher_template(images).argmax(dim=1)
    return images, targets


def build(
    name: str,
    student: str,
    teacher_template: models.KDModel,
    images: torch.Tensor,
    teacher: str | None = None,
    params: methods.MethodParams | None = None,
) -> Distiller:
    cls = methods.get(name)
    torch.manual_seed(2)
    s = models.create(student, num_classes=NUM_CLASSES)
    t = None
    if cls.needs.teacher:
        t = (
            copy.deepcopy(teacher_template)
            if teacher is None
            else models.create(teacher, num_classes=NUM_CLASSES)
        )
    return cls(
        s, t, params if params is not None else cls.Params(), images[:4], **construction_inputs(cls)
    )


# MLKD sums KD over five temperatures (T² up to 36) on two views: its loss is ~10× KD's scale, and
# its released CIFAR configs halve the LR (0.025). At 0.05 it overshoots on this one fixed batch.
# FT multiplies an L1 term (constant-size gradient, norm ~50 at init) by β = 200: at 0.05 with
# momentum the first steps overshoot on this one fixed batch (it does descend at small steps).
# SemCKD multiplies its feature MSE by β = 400: from the random ShuffleNetV2 student, 0.05 with momentum
# overshoots on this fixed batch (1240 → 64870 after 5 steps on this machine; it passed at 0.05 on earlier
# CI machines, so the margin was thin). At 0.01 both students descend.
STEP_LR = {"mlkd": 0.01, "ft": 0.001, "semckd": 0.01}

# A pretend training set for methods that index samples. CRD draws 16384 negatives: with a tiny
# set each other image of the batch would be drawn thousands of times and the memory bank would
# move under the fixed batch's own rows every step.
DATASET_SIZE = 4096


def construction_inputs(cls: type[Distiller]) -> dict:
    """What the loop gives a method at construction: the training batch size, and labels if declared."""
    inputs: dict = {"batch_size": BATCH}
    if cls.needs.sample_indices:
        inputs["train_labels"] = torch.arange(DATASET_SIZE) % NUM_CLASSES
    return inputs


def step_inputs(d: Distiller, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """What the loop gives every step besides images/targets: dataset indices, and strong views if declared."""
    inputs = {"indices": torch.arange(len(images))}
    if d.needs.strong_view:
        inputs["strong"] = torch.flip(images, dims=[3]) + 0.1 * torch.randn(
            images.shape, generator=torch.Generator().manual_seed(5)
        )
    return inputs


def ids(params) -> list[int]:
    return [id(p) for p in params]


# ---------------------------------------------------------------------------------------------
# One short training run per (method, student), shared by the contract tests below
# ---------------------------------------------------------------------------------------------


@dataclass
class Run:
    distiller: Distiller
    teacher_state_before: dict[str, torch.Tensor] | None
    teacher_training_after_train: list[bool]
    first_terms: dict[str, torch.Tensor]
    first_logits: torch.Tensor
    first_grads: dict[str, torch.Tensor | None]
    losses: list[float]


@pytest.fixture(scope="module")
def runs(teacher_template, batch):
    cache: dict[tuple[str, str], Run] = {}
    images, targets = batch

    def get(name: str, student: str) -> Run:
        if (name, student) in cache:
            return cache[name, student]
        # A method that cannot serve a pair (e.g. FSP needs equal channels at every tap) says why.
        supports = methods.get(name).supports
        reason = supports(
            models.create(student, num_classes=NUM_CLASSES), teacher_template, images[:2]
        )
        if reason is not None:
            pytest.skip(reason)
        d = build(name, student, teacher_template, images)
        t_before = None
        if d.teacher is not None:
            t_before = {k: v.detach().clone() for k, v in d.teacher.state_dict().items()}
        d.train()
        t_flags = [m.training for m in d.teacher.modules()] if d.teacher is not None else []
        opt = torch.optim.SGD(d.trainable_parameters(), lr=STEP_LR.get(name, 0.05), momentum=0.9)
        loss_values, first = [], None
        for step in range(STEPS + 1):
            logits, terms = d.forward_train(images, targets, epoch=1, **step_inputs(d, images))
            loss = sum(terms.values())
            loss_values.append(loss.item())
            if step == STEPS:
                break
            opt.zero_grad()
            loss.backward()
            if first is None:
                grads = {
                    k: (None if p.grad is None else p.grad.detach().clone())
                    for k, p in d.named_parameters()
                }
                first = (logits.detach(), {k: v.detach() for k, v in terms.items()}, grads)
            opt.step()
        cache[name, student] = Run(d, t_before, t_flags, first[1], first[0], first[2], loss_values)
        return cache[name, student]

    return get


def test_registry_holds_the_seed_methods():
    assert {"ce", "kd", "dist", "simkd"} <= set(METHODS)
    for name in METHODS:
        cls = methods.get(name)
        assert issubclass(cls, Distiller) and cls.name == name
        assert (
            methods.is_known(name)
            and methods.is_implemented(name)
            and name not in methods.NOT_IMPLEMENTED
        )
        assert cls.title and cls.paper
        cls.Params()  # defaults validate
    with pytest.raises(UnknownNameError):
        methods.get("no-such-method")


def test_needs_declarations():
    assert methods.get("ce").needs.teacher is False
    assert methods.get("kd").needs == methods.Needs(teacher=True, teacher_logits_only=True)
    # DIST's intra-class correlation is over the batch: it can be computed per original-GPU chunk.
    assert methods.get("dist").needs == methods.Needs(
        teacher=True, teacher_logits_only=True, batch_dependent_loss=True
    )
    assert (
        methods.get("mlkd").needs.batch_dependent_loss
        and not methods.get("kd").needs.batch_dependent_loss
    )
    # SimKD reads the teacher's feature map and reuses its classifier.
    assert methods.get("simkd").needs.teacher and not methods.get("simkd").needs.teacher_logits_only


@pytest.mark.parametrize("name", [n for n in METHODS if methods.get(n).needs.teacher])
def test_teacher_required(name, teacher_template, batch):
    cls = methods.get(name)
    with pytest.raises(ValueError, match="needs a teacher"):
        cls(models.create("resnet8x4", num_classes=NUM_CLASSES), None, cls.Params(), batch[0][:2])


@pytest.mark.parametrize("student", STUDENTS)
@pytest.mark.parametrize("name", METHODS)
def test_forward_train_and_test_shapes(name, student, runs, batch):
    run = runs(name, student)
    assert run.first_logits.shape == (BATCH, NUM_CLASSES)
    assert isinstance(run.first_terms, dict) and run.first_terms
    for key, value in run.first_terms.items():
        assert isinstance(key, str)
        assert value.shape == () and torch.isfinite(value), (key, value)
    out = run.distiller.forward_test_heads(batch[0])[
        ""
    ]  # the main prediction, as evaluate reads it
    assert out.shape == (BATCH, NUM_CLASSES) and torch.isfinite(out).all()
    assert not out.requires_grad


@pytest.mark.parametrize("student", STUDENTS)
@pytest.mark.parametrize("name", METHODS)
def test_summed_loss_decreases_on_a_fixed_batch(name, student, runs):
    values = runs(name, student).losses
    assert all(math.isfinite(v) for v in values), values
    assert values[-1] < values[0], values


@pytest.mark.parametrize("student", STUDENTS)
@pytest.mark.parametrize("name", METHODS)
def test_teacher_stays_frozen_and_in_eval_mode(name, student, runs):
    run = runs(name, student)
    d = run.distiller
    if not methods.get(name).needs.teacher:
        assert d.teacher is None
        assert ids(d.trainable_parameters()) == ids(d.student.parameters())
        return
    teacher = d.teacher
    # distiller.train() left every teacher module in eval mode, the student in train mode.
    assert run.teacher_training_after_train and not any(run.teacher_training_after_train)
    assert d.student.training != (
        "student" in type(d).frozen_modules
    )  # a frozen encoder stays in eval mode
    for mode_switch in (lambda: d.train(), lambda: d.train(True), lambda: d.eval().train()):
        mode_switch()
        assert not any(m.training for m in teacher.modules())
    assert all(not p.requires_grad for p in teacher.parameters())
    assert not set(ids(teacher.parameters())) & set(ids(d.trainable_parameters()))
    assert all(g is None for k, g in run.first_grads.items() if k.startswith("teacher."))
    # Parameters and BN running stats (incl. num_batches_tracked) unchanged after the SGD steps.
    after = teacher.state_dict()
    assert set(after) == set(run.teacher_state_before)
    for key, value in run.teacher_state_before.items():
        assert torch.equal(after[key], value), key
    assert not any(k.startswith("teacher.") for k in d.inference_state())


@pytest.mark.parametrize("student", STUDENTS)
@pytest.mark.parametrize("name", METHODS)
def test_extra_modules_are_trainable_and_get_gradients(name, student, runs):
    run = runs(name, student)
    d = run.distiller
    trainable = ids(d.trainable_parameters())
    assert len(trainable) == len(set(trainable))
    frozen = type(d).frozen_modules
    extras = {n: m for n, m in d.named_children() if n not in ("student", "teacher")}
    learning = {n: m for n, m in d.named_children() if n != "teacher" and n not in frozen}
    assert set(trainable) == {id(p) for m in learning.values() for p in m.parameters()}
    for module_name, module in extras.items():
        if module_name in INIT_ONLY_MODULES.get(name, ()) or module_name in frozen:
            continue  # trained only in the method's init stage, or deliberately frozen
        for pname, p in module.named_parameters():
            key = f"{module_name}.{pname}"
            assert p.requires_grad, key
            grad = run.first_grads[key]
            assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0, key
        assert any(k.startswith(f"{module_name}.") for k in d.inference_state())
    # The student encoder learns in every method but those that freeze it on purpose.
    student_learns = any(
        g is not None and g.abs().sum() > 0
        for k, g in run.first_grads.items()
        if k.startswith("student.")
    )
    assert student_learns != ("student" in frozen)


def test_simkd_has_a_projector_extra_module(runs):
    d = runs("simkd", "resnet8x4").distiller
    assert "projector" in dict(d.named_children())


# ---------------------------------------------------------------------------------------------
# Logit methods: terms equal the weighted pure losses
# ---------------------------------------------------------------------------------------------


def ce_by_hand(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return -torch.log_softmax(logits, dim=1)[torch.arange(len(targets)), targets].mean()


def eval_terms(d: Distiller, images, targets):
    d.eval()
    logits, terms = d.forward_train(images, targets, epoch=1, **step_inputs(d, images))
    with torch.no_grad():
        z_s, z_t = d.student(images), (d.teacher(images) if d.teacher is not None else None)
    return logits, terms, z_s, z_t


def close(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a.detach(), b.detach(), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("student", STUDENTS)
def test_kd_terms_are_weighted_pure_losses(student, teacher_template, batch):
    images, targets = batch
    d = build("kd", student, teacher_template, images)
    p = d.params
    assert (p.ce_weight, p.kd_weight, p.kd_temperature) == (0.1, 0.9, 4.0)  # CRD protocol defaults
    logits, terms, z_s, z_t = eval_terms(d, images, targets)
    assert set(terms) == {"ce", "kd"}
    close(logits, z_s)
    close(terms["kd"], 0.9 * losses.kd(z_s, z_t, 4.0))
    close(terms["ce"], 0.1 * ce_by_hand(z_s, targets))


def test_kd_simkd_protocol_terms(teacher_template, batch):
    images, targets = batch
    d = build(
        "kd",
        "resnet8x4",
        teacher_template,
        images,
        params=methods.resolve_params("kd", "simkd", {}),
    )
    _, terms, z_s, z_t = eval_terms(d, images, targets)
    close(terms["kd"], losses.kd(z_s, z_t, 4.0))
    close(terms["ce"], ce_by_hand(z_s, targets))


@pytest.mark.parametrize("student", STUDENTS)
@pytest.mark.parametrize(("variant", "tau"), [(None, 1.0), ("paper", 1.0), ("released-cifar", 4.0)])
def test_dist_terms_are_weighted_pure_losses(student, variant, tau, teacher_template, batch):
    images, targets = batch
    params = methods.resolve_params("dist", variant, {})
    assert (params.ce_weight, params.weight, params.beta, params.gamma, params.temperature) == (
        1.0,
        2.0,
        1.0,
        1.0,
        tau,
    )
    d = build("dist", student, teacher_template, images, params=params)
    logits, terms, z_s, z_t = eval_terms(d, images, targets)
    assert set(terms) == {"ce", "dist"}
    close(logits, z_s)
    close(terms["dist"], 2.0 * losses.dist(z_s, z_t, 1.0, 1.0, tau))
    close(terms["ce"], ce_by_hand(z_s, targets))


def test_ce_terms(teacher_template, batch):
    images, targets = batch
    d = build("ce", "resnet8x4", teacher_template, images)
    logits, terms, z_s, _ = eval_terms(d, images, targets)
    assert set(terms) == {"ce"}
    close(logits, z_s)
    close(terms["ce"], ce_by_hand(z_s, targets))


def test_shared_kd_term_can_be_added_to_any_method(teacher_template, batch):
    # SimKD's protocol carries CE + KD on the baselines: the shared fields add those terms.
    images, targets = batch
    params = methods.resolve_params("dist", None, {"kd_weight": 0.5, "kd_temperature": 2.0})
    d = build("dist", "resnet8x4", teacher_template, images, params=params)
    _, terms, z_s, z_t = eval_terms(d, images, targets)
    assert set(terms) == {"ce", "kd", "dist"}
    close(terms["kd"], 0.5 * losses.kd(z_s, z_t, 2.0))


# ---------------------------------------------------------------------------------------------
# SimKD specifics
# ---------------------------------------------------------------------------------------------


def projector_count(c_s: int, c_t: int, r: int) -> int:
    """docs/references.md §SimKD: C_t(C_s + C_t + 4)/r + 9C_t²/r² + 2C_t."""
    return c_t * (c_s + c_t + 4) // r + 9 * c_t * c_t // (r * r) + 2 * c_t


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize(
    ("student", "tap", "c_s", "aligned", "expected"),
    [
        # Literal counts from the spec's fixture table (methods-baselines.md §5b), r = 2.
        ("resnet8x4", "stage", 256, 8, 214_016),
        ("ShuffleV2", "stage", 464, 4, 240_640),
        ("ShuffleV2", "head", 1024, 4, 312_320),
        # VGG-8 512@4×4 → ResNet-32x4 256@8×8: teacher map pooled to 4×4; 128·772 + 147456 + 512.
        ("vgg8", "stage", 512, 4, 246_784),
    ],
)
def test_simkd_projector_shape_and_parameter_count(
    student, tap, c_s, aligned, expected, teacher_template, batch
):
    c_t = 256
    assert projector_count(c_s, c_t, 2) == expected
    params = methods.resolve_params("simkd", None, {"student_tap": tap})
    d = build("simkd", student, teacher_template, batch[0], params=params)
    convs = [m for m in d.projector.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.groups) for c in convs] == [
        (c_s, c_t // 2, (1, 1), 1),
        (c_t // 2, c_t // 2, (3, 3), 1),
        (c_t // 2, c_t, (1, 1), 1),
    ]
    assert all(c.bias is None for c in convs)
    assert isinstance(list(d.projector)[-1], nn.ReLU)
    assert n_params(d.projector) == expected
    assert d.aligned_size == aligned


def test_simkd_projector_reduction_factor(teacher_template, batch):
    params = methods.resolve_params("simkd", None, {"factor": 4})
    d = build("simkd", "resnet8x4", teacher_template, batch[0], params=params)
    # 256·516/4 + 9·256²/16 + 512 = 33024 + 36864 + 512 = 70400
    assert n_params(d.projector) == projector_count(256, 256, 4) == 70_400


def test_simkd_depthwise_projector(teacher_template, batch):
    params = methods.resolve_params("simkd", "imagenet", {})
    assert params.projector == "1x1-dw3x3-1x1"
    d = build("simkd", "resnet8x4", teacher_template, batch[0], params=params)
    mid = d.projector[3]
    assert isinstance(mid, nn.Conv2d) and mid.kernel_size == (3, 3)
    assert mid.groups == mid.in_channels == mid.out_channels == 128
    assert tuple(mid.weight.shape) == (128, 1, 3, 3)
    # 1×1 256·128 + BN 2·128 + depthwise 9·128 + BN 2·128 + 1×1 128·256 + BN 2·256 = 67712
    assert n_params(d.projector) == 67_712
    default = build("simkd", "resnet8x4", teacher_template, batch[0])
    assert default.projector[3].groups == 1


@pytest.mark.parametrize(
    ("design", "convs", "count"),
    [
        # C_s = C_t = 256, r = 2 (mid 128); each conv + BN(2·C_out)
        ("1x1", [(256, 256, 1)], 256 * 256 + 2 * 256),
        ("1x1-1x1", [(256, 128, 1), (128, 256, 1)], 256 * 128 + 2 * 128 + 128 * 256 + 2 * 256),
        ("1x1-dw3x3-1x1", [(256, 128, 1), (128, 128, 3), (128, 256, 1)], 67_712),
        (
            "1x1-3x3-1x1",
            [(256, 128, 1), (128, 128, 3), (128, 256, 1)],
            projector_count(256, 256, 2),
        ),
    ],
)
def test_simkd_projector_designs_of_table5(design, convs, count, teacher_template, batch):
    d = build(
        "simkd",
        "resnet8x4",
        teacher_template,
        batch[0],
        params=methods.resolve_params("simkd", None, {"projector": design}),
    )
    found = [
        (m.in_channels, m.out_channels, m.kernel_size[0])
        for m in d.projector
        if isinstance(m, nn.Conv2d)
    ]
    assert found == convs and n_params(d.projector) == count
    assert (
        sum(isinstance(m, nn.BatchNorm2d) for m in d.projector)
        == sum(isinstance(m, nn.ReLU) for m in d.projector)
        == len(convs)
    )


@pytest.mark.parametrize(
    ("variant", "tap", "c_in"),
    [(None, "stage", 464), ("released-code", "stage", 464), ("paper", "head", 1024)],
)
def test_simkd_student_tap(variant, tap, c_in, teacher_template, batch):
    params = methods.resolve_params("simkd", variant, {})
    assert params.student_tap == tap
    d = build("simkd", "ShuffleV2", teacher_template, batch[0], params=params)
    assert d.projector[0].in_channels == c_in


@pytest.mark.parametrize(
    ("student", "tap"),
    [("resnet8x4", "stage"), ("ShuffleV2", "stage"), ("ShuffleV2", "head"), ("vgg8", "stage")],
)
def test_simkd_logits_and_loss_by_hand(student, tap, teacher_template, batch):
    images, targets = batch
    params = methods.resolve_params("simkd", None, {"student_tap": tap})
    d = build("simkd", student, teacher_template, images, params=params)
    d.eval()
    with torch.no_grad():
        fs, ft = d.student.forward_features(images), d.teacher.forward_features(images)
        s_map = fs.stages[-1] if tap == "stage" else fs.head_map
        t_map = ft.head_map
        assert t_map.shape[1:] == (256, 8, 8)
        size = min(s_map.shape[-1], t_map.shape[-1])

        def pool(m: torch.Tensor) -> torch.Tensor:  # k×k average pooling to size×size
            k = m.shape[-1] // size
            return m.reshape(*m.shape[:2], size, k, size, k).mean(dim=(3, 5))

        projected = d.projector(pool(s_map))
        target = pool(t_map)
        expected_logits = d.teacher.classifier(projected.mean(dim=(2, 3)))
        expected_loss = ((projected - target) ** 2).mean()
        close(d.forward_test_heads(images)[""], expected_logits)
        logits, terms = d.forward_train(images, targets, epoch=1, **step_inputs(d, images))
    close(logits, expected_logits)
    # Default protocol: feature loss only (ce and kd weights 0, β = 1).
    assert (d.params.ce_weight, d.params.kd_weight, d.params.weight) == (0.0, 0.0, 1.0)
    assert set(terms) == {"simkd"}
    close(terms["simkd"], expected_loss)


# ---------------------------------------------------------------------------------------------
# resolve_params
# ---------------------------------------------------------------------------------------------


def test_resolve_params_defaults_variants_and_overrides():
    for name in METHODS:
        cls = methods.get(name)
        assert methods.resolve_params(name, None, {}) == cls.Params()
        for variant, spec in cls.variants.items():
            resolved = methods.resolve_params(name, variant, {})
            for key, value in spec.params.items():
                assert getattr(resolved, key) == value, (name, variant, key)
    kd = methods.resolve_params("kd", "simkd", {})
    assert (kd.ce_weight, kd.kd_weight, kd.kd_temperature) == (1.0, 1.0, 4.0)
    crd = methods.resolve_params("kd", "crd", {})
    assert (crd.ce_weight, crd.kd_weight) == (0.1, 0.9)
    assert methods.resolve_params("dist", "paper", {}).temperature == 1.0
    assert methods.resolve_params("dist", "released-cifar", {}).temperature == 4.0
    # Explicit overrides beat the variant; untouched fields keep the variant's values.
    over = methods.resolve_params("kd", "simkd", {"kd_weight": 0.5})
    assert (over.ce_weight, over.kd_weight) == (1.0, 0.5)
    assert methods.resolve_params("dist", "released-cifar", {"temperature": 2.0}).temperature == 2.0


def test_resolve_params_errors():
    with pytest.raises(UnknownNameError):
        methods.resolve_params("dist", "no-such-variant", {})
    with pytest.raises(UnknownNameError):
        methods.resolve_params("no-such-method", None, {})
    with pytest.raises(pydantic.ValidationError):
        methods.resolve_params("kd", None, {"no_such_param": 1.0})
    with pytest.raises(pydantic.ValidationError):
        methods.resolve_params("simkd", None, {"student_tap": "middle"})
    params = methods.resolve_params("kd", None, {})
    with pytest.raises(pydantic.ValidationError):
        params.kd_weight = 2.0  # frozen


def test_simkd_joint_training_trains_and_reports_both_classifiers(tmp_path):
    """α = 0.2: (1 − α)·(CE + KD) on the student's classifier + α·SimKD; both heads are evaluated."""
    from kdbench import train
    from kdbench.plan import DataSpec, RunSpec, TrainSpec

    def spec(method: str, params: dict, teacher=None) -> RunSpec:
        return RunSpec(
            profile="smoke",
            model="resnet8",
            method=method,
            method_params=methods.resolve_params(method, None, params).model_dump(),
            teacher=teacher,
            data=DataSpec(
                name="synthetic",
                options={"num_classes": 4, "image_size": 16, "train_size": 32, "test_size": 16},
            ),
            train=TrainSpec(
                epochs=2,
                batch_size=16,
                lr=0.05,
                milestones=(),
                lr_decay=0.1,
                momentum=0.9,
                nesterov=False,
                weight_decay=5e-4,
            ),
            seed=0,
        )

    from kdbench.plan import TeacherRef

    teacher = spec("ce", {})
    train.run(teacher, tmp_path, RunOptions(device="cpu"), show_progress=False)
    ref = TeacherRef(model="resnet8", run_id=teacher.run_id)
    joint = train.run(
        spec("simkd", {"ce_weight": 0.8, "kd_weight": 0.8, "weight": 0.2}, ref),
        tmp_path,
        RunOptions(device="cpu"),
        show_progress=False,
    )
    pure = train.run(
        spec("simkd", {}, ref), tmp_path, RunOptions(device="cpu"), show_progress=False
    )
    assert (
        set(joint.heads) == {"student_classifier"}
        and 0 <= joint.heads["student_classifier"].best_top1 <= 100
    )
    from kdbench.store.run_dir import RunDir

    history = RunDir(
        tmp_path, spec("simkd", {"ce_weight": 0.8, "kd_weight": 0.8, "weight": 0.2}, ref).run_id
    ).read_metrics()
    assert {"ce", "kd", "simkd"} <= set(history[-1].losses)
    assert "student_classifier" in history[-1].test
    pure_history = RunDir(tmp_path, spec("simkd", {}, ref).run_id).read_metrics()
    assert set(pure_history[-1].losses) == {"simkd"}
    assert pure.heads["student_classifier"].last_top1 >= 0
