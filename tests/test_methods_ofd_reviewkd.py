"""The OFD and ReviewKD methods: module sizes, terms, OFD's teacher mode and ReviewKD's warm-up
(their losses: tests/test_losses_ofd_reviewkd.py).

(The session-wide one-thread fixture of conftest.py applies.)
"""

from __future__ import annotations

import copy

import pytest
import torch
from kdbench import losses, methods, models
from kdbench.errors import KdbenchError
from kdbench.methods.ofd import batch_statistics
from torch import nn

# ---------------------------------------------------------------------------------------------
# The methods: module sizes (spec §5b), terms, OFD's teacher mode, ReviewKD's warm-up
# ---------------------------------------------------------------------------------------------

NUM_CLASSES = 10


@pytest.fixture(scope="module")
def teacher() -> models.KDModel:
    """A random ResNet-32x4 with BN statistics and affine parameters made non-trivial."""
    torch.manual_seed(0)
    t = models.create("resnet32x4", num_classes=NUM_CLASSES)
    with torch.no_grad():
        for m in t.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    t.train()
    with torch.no_grad():
        t(torch.randn(16, 3, 32, 32))
    return t.eval()


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def build(name: str, student: str, teacher: models.KDModel, images: torch.Tensor, **overrides):
    torch.manual_seed(2)
    cls = methods.get(name)
    return cls(
        models.create(student, num_classes=NUM_CLASSES),
        copy.deepcopy(teacher),
        methods.resolve_params(name, None, overrides),
        images[:2],
    )


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize(("student", "expected"), [("resnet8x4", 86_912), ("ShuffleV2", 156_800)])
def test_ofd_connectors_and_margins(student, expected, teacher, images):
    d = build("ofd", student, teacher, images)
    assert (
        n_params(d.connectors) == expected
    )  # docs/references.md §Loss weights of the baselines (fixtures)
    for conn in d.connectors:
        conv, bn = conn
        assert conv.kernel_size == (1, 1) and conv.bias is None and isinstance(bn, nn.BatchNorm2d)
    bns = d.teacher.bn_before_relu()
    for margin, bn in zip(d.margins(), bns):
        torch.testing.assert_close(margin, losses.ofd_margins(bn.weight, bn.bias), rtol=0, atol=0)
    assert not any(k.startswith("margin") for k in d.state_dict())  # constants, not checkpointed
    p = d.params
    assert (p.ce_weight, p.kd_weight, p.weight, p.teacher_bn) == (1.0, 0.0, 1e-3, "batch")
    assert methods.resolve_params("ofd", "imagenet", {}).weight == 1e-4


def test_ofd_refuses_shufflenet_teachers(images):
    cls = methods.get("ofd")
    student, shuffle = (
        models.create("resnet8x4", num_classes=NUM_CLASSES),
        models.create("ShuffleV2", num_classes=NUM_CLASSES),
    )
    reason = cls.supports(student, shuffle, images[:2])
    assert reason is not None and "OFD unsupported" in reason and "CifarResNet student" in reason
    assert cls.supports(student, models.create("resnet8", num_classes=NUM_CLASSES)) is None
    with pytest.raises(KdbenchError, match="OFD unsupported"):
        cls(student, shuffle, cls.Params(), images[:2])


def test_ofd_pairs_back_aligned_with_their_margins(images):
    # ResNet50 (4 preact taps) → resnet8 (3): the teacher's last three taps and their BNs.
    torch.manual_seed(0)
    d = methods.get("ofd")(
        models.create("resnet8", num_classes=NUM_CLASSES),
        models.create("ResNet50", num_classes=NUM_CLASSES),
        methods.get("ofd").Params(),
        images[:2],
    )
    assert [c[0].out_channels for c in d.connectors] == [512, 1024, 2048]
    assert [m.shape[0] for m in d.margins()] == [512, 1024, 2048]


@pytest.mark.parametrize("teacher_bn", ["batch", "running"])
def test_ofd_term_equals_the_weighted_pure_loss(teacher_bn, teacher, images):
    d = build("ofd", "resnet8x4", teacher, images, teacher_bn=teacher_bn)
    d.train()
    targets = torch.arange(len(images)) % NUM_CLASSES
    t_before = {k: v.clone() for k, v in d.teacher.state_dict().items()}
    student_state = copy.deepcopy(d.student.state_dict())
    connectors_state = copy.deepcopy(d.connectors.state_dict())
    _, terms = d.forward_train(images, targets, epoch=1)
    assert set(terms) == {"ce", "ofd"}
    # The teacher's state (incl. running stats and batch counters) and modes are untouched.
    for k, v in d.teacher.state_dict().items():
        assert torch.equal(v, t_before[k]), k
    assert not any(m.training for m in d.teacher.modules())
    # Recompute by hand from a fresh copy of the networks (student BN updated its stats once).
    d.student.load_state_dict(student_state)
    d.connectors.load_state_dict(connectors_state)
    fs = d.student.forward_features(images)
    with torch.no_grad():
        # In "batch" mode the released code runs the teacher in train mode.
        reference_teacher = copy.deepcopy(d.teacher).train() if teacher_bn == "batch" else d.teacher
        ft = reference_teacher.forward_features(images)
    connected = [c(f) for c, f in zip(d.connectors, fs.preact[1:])]
    expected = 1e-3 * losses.ofd(connected, ft.preact[1:], d.margins())
    torch.testing.assert_close(terms["ofd"], expected, rtol=1e-5, atol=1e-8)
    # Batch statistics differ from the running ones, so the two modes really differ.
    with torch.no_grad():
        eval_pre = d.teacher.forward_features(images).preact[-1]
    assert torch.equal(eval_pre, ft.preact[-1]) == (teacher_bn == "running")


def test_batch_statistics_restores_modes_after_errors(teacher):
    t = copy.deepcopy(teacher)
    with pytest.raises(RuntimeError), batch_statistics(t):
        assert all(m.training for m in t.modules() if isinstance(m, nn.BatchNorm2d))
        raise RuntimeError("boom")
    assert not any(m.training for m in t.modules())
    assert all(m.track_running_stats for m in t.modules() if isinstance(m, nn.BatchNorm2d))


def test_reviewkd_abfs_follow_the_released_configs(teacher, images):
    d = build("reviewkd", "resnet8x4", teacher, images)
    assert n_params(d.abfs) == 1_808_774  # mdistiller ReviewKD.py's ABFs, its default config
    # RV build_review_kd for an x4 student: in = out = [64, 128, 256, 256], mid 256, shapes [1, 8, 16, 32].
    assert [a.conv1[0].in_channels for a in d.abfs] == [64, 128, 256, 256]
    assert [a.conv2[0].out_channels for a in d.abfs] == [64, 128, 256, 256]
    assert {a.conv1[0].out_channels for a in d.abfs} == {256}
    assert [a.att_conv is not None for a in d.abfs] == [True, True, True, False]
    assert d.out_sizes == [(32, 32), (16, 16), (8, 8), (1, 1)]
    # ShuffleV2: in [116, 232, 464, 1024], mid min(512, 1024) = 512, out [64, 128, 256, 256].
    d = build("reviewkd", "ShuffleV2", teacher, images)
    assert [a.conv1[0].in_channels for a in d.abfs] == [116, 232, 464, 1024]
    assert [a.conv2[0].out_channels for a in d.abfs] == [64, 128, 256, 256]
    assert {a.conv1[0].out_channels for a in d.abfs} == {512}
    assert (
        d.params.weight == 5.0 and methods.resolve_params("reviewkd", "cifar-w8", {}).weight == 8.0
    )


def test_reviewkd_refuses_unequal_stage_counts(teacher, images):
    cls = methods.get("reviewkd")
    vgg = models.create("vgg8", num_classes=NUM_CLASSES)
    assert "4 stages and the teacher 3" in cls.supports(vgg, teacher, images[:2])
    with pytest.raises(KdbenchError, match="same number of stages"):
        cls(vgg, copy.deepcopy(teacher), cls.Params(), images[:2])


def manual_review(d, fs) -> list[torch.Tensor]:
    """The review path written out level by level (deepest first), from the spec's description."""
    levels = [*fs.stages[1:], fs.pooled[:, :, None, None]]
    outs, residual = [None] * len(levels), None
    for i in reversed(range(len(levels))):
        abf, x = d.abfs[i], d.abfs[i].conv1(levels[i])
        if residual is not None:
            up = torch.nn.functional.interpolate(residual, size=x.shape[-2:], mode="nearest")
            a = abf.att_conv(torch.cat([x, up], 1))
            x = a[:, :1] * x + a[:, 1:2] * up
        target = d.out_sizes[i]
        if x.shape[-2:] != target:
            x = torch.nn.functional.interpolate(x, size=target, mode="nearest")
        outs[i], residual = abf.conv2(x), x
    return outs


@pytest.mark.parametrize("student", ["resnet8x4", "ShuffleV2"])
def test_reviewkd_term_and_warmup(student, teacher, images):
    d = build("reviewkd", student, teacher, images)
    d.eval()  # fixed BN statistics, so repeated passes agree
    targets = torch.arange(len(images)) % NUM_CLASSES
    with torch.no_grad():
        fs, ft = d.student.forward_features(images), d.teacher.forward_features(images)
        outs = manual_review(d, fs)
        t_levels = [*ft.preact[1:], ft.pooled[:, :, None, None]]
        assert [o.shape for o in outs] == [t.shape for t in t_levels]
        hcl = losses.reviewkd(outs, t_levels)
        for epoch, factor in [(1, 1 / 20), (10, 0.5), (20, 1.0), (200, 1.0)]:
            _, terms = d.forward_train(images, targets, epoch=epoch)
            assert set(terms) == {"ce", "reviewkd"}
            torch.testing.assert_close(terms["reviewkd"], 5.0 * factor * hcl, rtol=1e-5, atol=1e-8)
    rv = methods.resolve_params("reviewkd", "rv-code", {})
    d.params = rv
    assert d.warmup_factor(1) == 0.0 and d.warmup_factor(11) == 0.5 and d.warmup_factor(21) == 1.0
    d.params = methods.resolve_params("reviewkd", "imagenet-r34-r18", {})
    assert d.warmup_factor(1) == 1.0 and d.params.student_preact


def test_reviewkd_is_the_first_half_of_its_combinations(teacher, images):
    cls = methods.get("reviewkd+mlkd")
    params = methods.resolve_params("reviewkd+mlkd", None, {})
    torch.manual_seed(2)
    student = models.create("resnet8x4", num_classes=NUM_CLASSES)
    d = cls(student, copy.deepcopy(teacher), params, images[:2])
    d.train()
    targets = torch.arange(len(images)) % NUM_CLASSES
    _, terms = d.forward_train(
        images, targets, epoch=5, indices=torch.arange(len(images)), strong=images.flip(3)
    )
    assert {"ce", "reviewkd"} <= set(terms) and any(k.startswith("mlkd_") for k in terms)
    abf_ids = {id(p) for p in d.abfs.parameters()}
    assert abf_ids <= {id(p) for p in d.trainable_parameters()}
    sum(terms.values()).backward()
    assert all(p.grad is not None for p in d.abfs.parameters())
    assert all(p.grad is None for p in d.teacher.parameters())
