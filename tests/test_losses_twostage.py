"""The two-stage methods AB, FT and FSP (RepDistiller ``distiller_zoo/{AB,FT,FSP}.py``; docs/references.md §Training protocols): golden values of
their losses, their extra modules and init stages, and one end-to-end run of the loop's
pre-training stage (metrics, what it trains, resume after an init epoch).

The references are written from the spec's definitions in plain numpy float64 (explicit pooling,
loops, norms; no torch.nn.functional), so they check the library rather than restate it.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from kdbench import losses, methods, models
from kdbench.errors import KdbenchError
from kdbench.losses import feature
from kdbench.methods import InitStage
from kdbench.methods.ab import ABConnector
from kdbench.plan import DataSpec, RunSpec, TeacherRef, TrainSpec
from kdbench.store.records import EpochRecord
from kdbench.store.run_dir import RunDir
from kdbench.train import loop as train
from torch import nn

from reference import ref_align


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ---------------------------------------------------------------------------------------------
# Independent numpy float64 references
# ---------------------------------------------------------------------------------------------


def ref_ab(ss: list[np.ndarray], ts: list[np.ndarray], m: float = 1.0) -> float:
    n, batch = len(ss), ss[0].shape[0]
    total = 0.0
    for i, (s, t) in enumerate(zip(ss, ts)):
        pair = 0.0
        for sv, tv in zip(s.ravel(), t.ravel()):
            if sv > -m and tv <= 0:
                pair += (sv + m) ** 2
            if sv <= m and tv > 0:
                pair += (sv - m) ** 2
        total += 2.0 ** (i - n + 1) * pair / batch * 3 / 1000
    return total


def ref_factor(x: np.ndarray, p1: float) -> np.ndarray:
    b = x.shape[0]
    v = (x**p1).sum(axis=1).reshape(b, -1) / x.shape[1]
    return v / np.maximum(np.sqrt((v * v).sum(axis=1, keepdims=True)), 1e-12)


def ref_ft(s: np.ndarray, t: np.ndarray, p1: float = 2, p2: float = 1) -> float:
    s, t = ref_align(s, t)
    d = ref_factor(s, p1) - ref_factor(t, p1)
    e = np.abs(d) if p2 == 1 else d**p2
    return float(e.sum() / e.size)


def ref_fsp_matrix(bottom: np.ndarray, top: np.ndarray) -> np.ndarray:
    bottom, top = ref_align(bottom, top)
    b, c_bot = bottom.shape[:2]
    c_top = top.shape[1]
    g = np.empty((b, c_top, c_bot))
    for n in range(b):
        for i in range(c_top):
            for j in range(c_bot):
                g[n, i, j] = (top[n, i] * bottom[n, j]).sum() / top[n, i].size
    return g


def ref_fsp(ss: list[np.ndarray], ts: list[np.ndarray]) -> float:
    total = 0.0
    for i in range(len(ss) - 1):
        d = ref_fsp_matrix(ss[i], ss[i + 1]) - ref_fsp_matrix(ts[i], ts[i + 1])
        total += float((d * d).sum() / d.size)
    return total


def _rand(rng: np.random.Generator, shapes, scale: float = 1.0) -> list[np.ndarray]:
    return [scale * rng.standard_normal(s) for s in shapes]


def _t(xs: list[np.ndarray], dtype: torch.dtype) -> list[torch.Tensor]:
    return [torch.tensor(x, dtype=dtype) for x in xs]


def _f32(xs: list[np.ndarray]) -> list[np.ndarray]:
    return [x.astype(np.float32).astype(np.float64) for x in xs]


def _check(fn, ref, *lists, rtol32: float = 2e-5, atol32: float = 1e-7) -> None:
    got64 = fn(*[_t(xs, torch.float64) for xs in lists]).item()
    assert math.isclose(got64, ref(*lists), rel_tol=1e-10, abs_tol=1e-13), (got64, ref(*lists))
    rounded = [_f32(xs) for xs in lists]
    got32 = fn(*[_t(xs, torch.float32) for xs in rounded]).item()
    assert math.isclose(got32, ref(*rounded), rel_tol=rtol32, abs_tol=atol32), (
        got32,
        ref(*rounded),
    )


# ---------------------------------------------------------------------------------------------
# Losses vs references
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("margin", [1.0, 0.5])
@pytest.mark.parametrize(
    "shapes",
    [[(4, 8, 6, 6)], [(3, 4, 8, 8), (3, 8, 4, 4), (3, 16, 2, 2)], [(2, 5, 7, 7), (2, 3, 5, 5)]],
)
def test_ab_matches_reference(shapes, margin):
    rng = np.random.default_rng(len(shapes) + int(10 * margin))
    ss, ts = _rand(rng, shapes, 1.5), _rand(rng, shapes)
    _check(lambda s, t: losses.ab(s, t, margin), lambda s, t: ref_ab(s, t, margin), ss, ts)


@pytest.mark.parametrize(("p1", "p2"), [(2, 1), (2, 2), (1, 1)])
@pytest.mark.parametrize(
    ("s_shape", "t_shape"),
    [
        ((4, 8, 6, 6), (4, 16, 6, 6)),
        ((3, 6, 8, 8), (3, 4, 4, 4)),
        ((2, 5, 3, 3), (2, 7, 7, 7)),
        ((2, 3, 4, 4), (2, 3, 8, 8)),
    ],
)
def test_ft_matches_reference(s_shape, t_shape, p1, p2):
    rng = np.random.default_rng(sum(s_shape) + 7 * p2)
    s, t = rng.standard_normal(s_shape), rng.standard_normal(t_shape)
    if p1 == 1:  # channel mean of x¹ may be negative: still a valid normalised map
        s, t = np.abs(s), np.abs(t)
    _check(
        lambda a, b: losses.ft(a[0], b[0], p1, p2),
        lambda a, b: ref_ft(a[0], b[0], p1, p2),
        [s],
        [t],
    )


@pytest.mark.parametrize(
    ("s_shapes", "t_shapes"),
    [
        ([(3, 4, 8, 8), (3, 4, 8, 8), (3, 6, 4, 4)], [(3, 4, 8, 8), (3, 4, 8, 8), (3, 6, 4, 4)]),
        # different spatial sizes between the networks, non-integer pooling inside one
        (
            [(2, 3, 8, 8), (2, 5, 4, 4), (2, 2, 2, 2), (2, 4, 2, 2)],
            [(2, 3, 6, 6), (2, 5, 7, 7), (2, 2, 3, 3), (2, 4, 1, 1)],
        ),
    ],
)
def test_fsp_matches_reference(s_shapes, t_shapes):
    rng = np.random.default_rng(len(s_shapes))
    ss, ts = _rand(rng, s_shapes), _rand(rng, t_shapes)
    _check(losses.fsp, ref_fsp, ss, ts)


def test_fsp_matrix_orientation_and_pooling():
    bottom = torch.tensor(
        [[[[1.0, 2.0], [3.0, 4.0]]]], dtype=torch.float64
    )  # 1×1×2×2, pooled to 2.5
    top = torch.tensor([[[[1.0]], [[2.0]]]], dtype=torch.float64)  # 1×2×1×1
    g = feature.fsp_matrix(bottom, top)
    assert g.shape == (1, 2, 1)  # (B, C_top, C_bottom)
    torch.testing.assert_close(g, torch.tensor([[[2.5], [5.0]]], dtype=torch.float64))


# ---------------------------------------------------------------------------------------------
# Hand-computed literals
# ---------------------------------------------------------------------------------------------


def test_ab_by_hand():
    # s = −2 (t ≤ 0, below −m: 0), −0.5 (t ≤ 0: (0.5)²), 0.5 (t > 0: (−0.5)²), 2 (t > 0, above m: 0)
    s1 = torch.tensor([-2.0, -0.5, 0.5, 2.0], dtype=torch.float64).reshape(1, 4, 1, 1)
    t1 = torch.tensor([-1.0, 0.0, 1.0, 1.0], dtype=torch.float64).reshape(1, 4, 1, 1)
    assert losses.ab([s1], [t1]).item() == pytest.approx(0.5 * 3 / 1000, rel=1e-12)
    # second (deeper) pair: s = 0 with t = 0 → (0+1)², with t = 1 → (0−1)²: 2; weights ½ and 1
    s2 = torch.zeros(1, 2, 1, 1, dtype=torch.float64)
    t2 = torch.tensor([0.0, 1.0], dtype=torch.float64).reshape(1, 2, 1, 1)
    expected = (0.5 * 0.5 + 1.0 * 2.0) * 3 / 1000
    assert losses.ab([s1, s2], [t1, t2]).item() == pytest.approx(expected, rel=1e-12)
    # the batch size divides: the same sample twice gives the same value
    doubled = losses.ab(
        [s1.repeat(2, 1, 1, 1), s2.repeat(2, 1, 1, 1)],
        [t1.repeat(2, 1, 1, 1), t2.repeat(2, 1, 1, 1)],
    )
    assert doubled.item() == pytest.approx(expected, rel=1e-12)


def test_ft_by_hand():
    # student: channels (1, 1) and (1, −1) → mean x² = (1, 1) → (1/√2, 1/√2); teacher (0, 2) → (0, 1)
    s = torch.tensor([[[[1.0, 1.0]], [[1.0, -1.0]]]], dtype=torch.float64)
    t = torch.tensor([[[[0.0, 2.0]]]], dtype=torch.float64)
    r = 1 / math.sqrt(2)
    assert losses.ft(s, t).item() == pytest.approx((r + (1 - r)) / 2, rel=1e-12)  # = 0.5
    assert losses.ft(s, t, p2=2).item() == pytest.approx((r**2 + (1 - r) ** 2) / 2, rel=1e-12)


def test_fsp_by_hand():
    # student G = mean(3·1, 4·2) = 5.5, teacher G = 1: loss (4.5)²
    s = [
        torch.tensor([[[[1.0, 2.0]]]], dtype=torch.float64),
        torch.tensor([[[[3.0, 4.0]]]], dtype=torch.float64),
    ]
    t = [torch.ones(1, 1, 1, 2, dtype=torch.float64), torch.ones(1, 1, 1, 2, dtype=torch.float64)]
    assert losses.fsp(s, t).item() == pytest.approx(20.25, rel=1e-12)
    # three taps: the two pair losses are summed (second pair: G_s = mean(3·5, 4·6) = 19.5 vs 1)
    s.append(torch.tensor([[[[5.0, 6.0]]]], dtype=torch.float64))
    t.append(torch.ones(1, 1, 1, 2, dtype=torch.float64))
    assert losses.fsp(s, t).item() == pytest.approx(20.25 + 18.5**2, rel=1e-12)


def test_fsp_rejects_unequal_channels():
    with pytest.raises(ValueError, match="channel"):
        losses.fsp(
            [torch.ones(1, 2, 2, 2), torch.ones(1, 3, 2, 2)],
            [torch.ones(1, 2, 2, 2), torch.ones(1, 4, 2, 2)],
        )


# ---------------------------------------------------------------------------------------------
# Gradients reach the student side only
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["ab", "ft", "fsp"])
def test_gradient_reaches_student_not_teacher(name):
    g = torch.Generator().manual_seed(0)
    if name == "ft":
        s, t = [torch.randn(2, 4, 4, 4, generator=g)], [torch.randn(2, 6, 8, 8, generator=g)]
    else:
        s = [torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 8, 4, 4, generator=g)]
        t = [torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 8, 4, 4, generator=g)]
    for x in s + t:
        x.requires_grad_(True)
    loss = {
        "ab": lambda: losses.ab(s, t),
        "ft": lambda: losses.ft(s[0], t[0]),
        "fsp": lambda: losses.fsp(s, t),
    }[name]()
    loss.backward()
    assert all(x.grad is not None and x.grad.abs().sum() > 0 for x in s)
    assert all(x.grad is None for x in t)


def test_exported():
    assert {"ab", "ft", "fsp"} <= set(feature.__all__)
    from kdbench.losses import ab, fsp, ft  # noqa: F401


# ---------------------------------------------------------------------------------------------
# Extra modules (§5b fixtures) and FSP's pair requirement
# ---------------------------------------------------------------------------------------------

EXAMPLE = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def make(
    name: str,
    student: str,
    teacher: str,
    num_classes: int = 100,
    example: torch.Tensor = EXAMPLE,
    **params,
):
    cls = methods.get(name)
    torch.manual_seed(0)
    return cls(
        models.create(student, num_classes=num_classes),
        models.create(teacher, num_classes=num_classes),
        cls.Params(**params),
        example,
    )


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize(
    ("teacher", "student", "ab_conn", "ft_trans", "ft_para"),
    [
        ("resnet32x4", "resnet8x4", 0, 1_033_728, 2_065_536),
        ("wrn_40_2", "wrn_16_2", 0, 258_816, 516_672),
        ("resnet56", "resnet20", 0, 64_896, 129_312),
        ("resnet32x4", "ShuffleV2", 2_495_808, 2_621_808, 2_065_536),
        ("vgg13", "MobileNetV2", 1_345_152, 1_190_880, 8_259_840),
    ],
)
def test_extra_module_parameter_counts(teacher, student, ab_conn, ft_trans, ft_para):
    ab = make("ab", student, teacher)
    assert n_params(ab.connectors) == ab_conn
    ft = make("ft", student, teacher)
    assert n_params(ft.translator) == ft_trans
    assert n_params(ft.paraphraser) == ft_para


def test_ab_connectors_are_identity_or_conv_bn_without_relu():
    same = make("ab", "resnet8x4", "resnet32x4")
    assert all(isinstance(c, nn.Identity) for c in same.connectors)
    cross = make(
        "ab", "ShuffleV2", "resnet32x4"
    )  # 116@16 → 64@32 etc.: 4×4 transposed convs, stride 2
    assert all(isinstance(c, ABConnector) for c in cross.connectors)
    assert [(c.conv.kernel_size, c.conv.stride, c.conv.out_channels) for c in cross.connectors] == [
        ((4, 4), (2, 2), 64),
        ((4, 4), (2, 2), 128),
        ((4, 4), (2, 2), 256),
    ]
    assert all(
        isinstance(c.conv, nn.ConvTranspose2d) and c.conv.bias is not None for c in cross.connectors
    )
    c = cross.connectors[0].train()
    x = torch.randn(2, 116, 16, 16)
    torch.testing.assert_close(c(x), c.bn(c.conv(x)))
    assert (c(x) < 0).any()  # no ReLU


def test_ft_modules_layout():
    ft = make("ft", "ShuffleV2", "resnet32x4")
    convs = [m for m in ft.paraphraser.encoder if isinstance(m, nn.Conv2d)]
    deconvs = [m for m in ft.paraphraser.decoder if isinstance(m, nn.ConvTranspose2d)]
    assert [(m.in_channels, m.out_channels) for m in convs] == [(256, 256), (256, 128), (128, 128)]
    assert [(m.in_channels, m.out_channels) for m in deconvs] == [
        (128, 128),
        (128, 256),
        (256, 256),
    ]
    assert not any(isinstance(m, nn.BatchNorm2d) for m in ft.paraphraser.modules())
    assert (
        sum(
            isinstance(m, nn.LeakyReLU) and m.negative_slope == 0.1
            for m in ft.paraphraser.modules()
        )
        == 6
    )
    t_convs = [m for m in ft.translator if isinstance(m, nn.Conv2d)]
    assert [(m.in_channels, m.out_channels, m.kernel_size) for m in t_convs] == [
        (464, 464, (3, 3)),
        (464, 128, (3, 3)),
        (128, 128, (3, 3)),
    ]
    assert sum(isinstance(m, nn.BatchNorm2d) for m in ft.translator) == 3


@pytest.mark.parametrize(
    ("teacher", "student"),
    [("resnet32x4", "ShuffleV2"), ("wrn_40_2", "wrn_40_1"), ("vgg13", "MobileNetV2")],
)
def test_fsp_refuses_pairs_with_unequal_channels(teacher, student):
    cls = methods.get("fsp")
    s, t = models.create(student), models.create(teacher)
    reason = cls.supports(s, t, EXAMPLE)
    assert reason is not None and "FSP" in reason and "channel" in reason
    with pytest.raises(KdbenchError, match="FSP .*student.*teacher"):
        make("fsp", student, teacher)


@pytest.mark.parametrize(
    ("teacher", "student"),
    [("resnet32x4", "resnet8x4"), ("wrn_40_2", "wrn_16_2"), ("resnet56", "resnet20")],
)
def test_fsp_accepts_pairs_with_equal_channels(teacher, student):
    cls = methods.get("fsp")
    assert cls.supports(models.create(student), models.create(teacher), EXAMPLE) is None
    make("fsp", student, teacher)


# ---------------------------------------------------------------------------------------------
# Defaults, init stages, and the terms of both stages
# ---------------------------------------------------------------------------------------------


def test_defaults_follow_the_crd_protocol():
    ab, ft, fsp = (methods.get(n).Params() for n in ("ab", "ft", "fsp"))
    assert (ab.ce_weight, ab.kd_weight, ab.init_epochs, ab.margin) == (1.0, 0.0, 30, 1.0)
    assert (ft.ce_weight, ft.kd_weight, ft.weight, ft.init_epochs, ft.rate, ft.p1, ft.p2) == (
        1.0,
        0.0,
        200.0,
        30,
        0.5,
        2.0,
        1.0,
    )
    assert (fsp.ce_weight, fsp.kd_weight, fsp.init_epochs) == (1.0, 0.0, 30)
    for name in ("ab", "ft", "fsp"):
        assert methods.resolve_params(name, "crd", {}) == methods.get(name).Params()


SMALL = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(1))


def ids(params) -> set[int]:
    return {id(p) for p in params}


def test_init_stage_parameters():
    # AB: connectors + stem + stages (not ShuffleNetV2's head conv/BN, not the classifier)
    ab = make("ab", "ShuffleV2", "resnet32x4", num_classes=10, example=SMALL)
    stage = ab.init_stage()
    assert stage.epochs == 30
    s = ab.student
    expected = (
        ids(ab.connectors.parameters()) | ids(s.stem.parameters()) | ids(s.stages.parameters())
    )
    assert ids(stage.parameters) == expected and len(stage.parameters) == len(expected)
    assert not ids(stage.parameters) & (ids(s.classifier.parameters()) | ids(s.head.parameters()))
    # WRN: the final BN (after the last stage) is not a feature module either
    wrn = make("fsp", "wrn_16_2", "wrn_40_2", num_classes=10, example=SMALL)
    w = wrn.student
    assert ids(wrn.init_stage().parameters) == ids(w.parameters()) - ids(
        w.classifier.parameters()
    ) - ids(w.bn.parameters())
    # FSP on a CIFAR ResNet: everything but the classifier
    fsp = make("fsp", "resnet8x4", "resnet32x4", num_classes=10, example=SMALL)
    r = fsp.student
    assert ids(fsp.init_stage().parameters) == ids(r.parameters()) - ids(r.classifier.parameters())
    # FT: the paraphraser only; LR 0.01 hard-coded for CIFAR ResNet / WRN students, else the base LR
    ft = make("ft", "resnet8x4", "resnet32x4", num_classes=10, example=SMALL)
    ft_stage = ft.init_stage()
    assert isinstance(ft_stage, InitStage) and ft_stage.lr == 0.01 and ft_stage.epochs == 30
    assert ids(ft_stage.parameters) == ids(ft.paraphraser.parameters())
    assert (
        make("ft", "ShuffleV2", "resnet32x4", num_classes=10, example=SMALL).init_stage().lr is None
    )
    assert make("ft", "wrn_16_2", "wrn_40_2", num_classes=10, example=SMALL).init_stage().lr == 0.01
    # init_epochs = 0: no pre-training stage
    assert (
        make(
            "ab", "resnet8x4", "resnet32x4", num_classes=10, example=SMALL, init_epochs=0
        ).init_stage()
        is None
    )


def close(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a.detach(), b.detach(), rtol=1e-6, atol=1e-7)


def test_ab_terms_of_both_stages():
    d = make("ab", "ShuffleV2", "resnet32x4", num_classes=10, example=SMALL).eval()
    targets = torch.arange(4)
    init_terms = d.forward_init(SMALL, targets)
    s, t = d.student.forward_features(SMALL), d.teacher.forward_features(SMALL)
    assert set(init_terms) == {"ab"}
    close(
        init_terms["ab"],
        losses.ab([c(f) for c, f in zip(d.connectors, s.preact[1:])], t.preact[1:]),
    )
    logits, terms = d.forward_train(SMALL, targets, epoch=1)
    assert set(terms) == {"ce"}  # main stage: CE only
    close(logits, s.logits)
    close(terms["ce"], nn.functional.cross_entropy(s.logits, targets))


def test_ft_terms_of_both_stages():
    d = make("ft", "ShuffleV2", "resnet32x4", num_classes=10, example=SMALL).eval()
    targets = torch.arange(4)
    init_terms = d.forward_init(SMALL, targets)
    s, t = d.student.forward_features(SMALL), d.teacher.forward_features(SMALL)
    f_t = t.stages[-1]
    assert set(init_terms) == {"ft_paraphraser"}
    close(
        init_terms["ft_paraphraser"],
        ((d.paraphraser.decoder(d.paraphraser.encoder(f_t)) - f_t) ** 2).mean(),
    )
    _, terms = d.forward_train(SMALL, targets, epoch=1)
    assert set(terms) == {"ce", "ft"}
    close(terms["ft"], 200.0 * losses.ft(d.translator(s.stages[-1]), d.paraphraser.encoder(f_t)))


def test_fsp_terms_of_both_stages():
    d = make("fsp", "resnet8x4", "resnet32x4", num_classes=10, example=SMALL).eval()
    targets = torch.arange(4)
    init_terms = d.forward_init(SMALL, targets)
    s, t = d.student.forward_features(SMALL), d.teacher.forward_features(SMALL)
    assert set(init_terms) == {"fsp"}
    close(init_terms["fsp"], losses.fsp(s.stages, t.stages))
    _, terms = d.forward_train(SMALL, targets, epoch=1)
    assert set(terms) == {"ce"}


def _sgd(params) -> torch.optim.SGD:
    return torch.optim.SGD(
        params, lr=0.01, momentum=0.9, weight_decay=5e-4
    )  # P-RD, with weight decay


def _step(opt: torch.optim.Optimizer, terms: dict[str, torch.Tensor]) -> None:
    opt.zero_grad(set_to_none=True)
    sum(terms.values()).backward()
    opt.step()


def _snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _changed(before: dict[str, torch.Tensor], module: nn.Module) -> set[str]:
    return {k for k, v in module.state_dict().items() if not torch.equal(v, before[k])}


@pytest.mark.parametrize("name", ["ab", "ft"])
def test_init_only_modules_learn_in_the_init_stage_and_stay_fixed_after(name):
    d = make(name, "ShuffleV2", "resnet32x4", num_classes=10, example=SMALL)
    module = {"ab": lambda: d.connectors, "ft": lambda: d.paraphraser}[name]()
    assert type(d).init_only_modules == (("connectors",) if name == "ab" else ("paraphraser",))
    targets = torch.arange(4)
    d.train()
    stage = d.init_stage()
    before_student, before = _snapshot(d.student), _snapshot(module)
    _step(_sgd(stage.parameters), d.forward_init(SMALL, targets))
    assert any(k.endswith("weight") for k in _changed(before, module))
    assert not any(p.grad is not None for p in d.student.classifier.parameters())
    changed_student = _changed(before_student, d.student)
    if name == "ft":
        assert not changed_student  # the student takes no part in FT's init stage
    else:
        assert any(k.startswith("stages.") and k.endswith("weight") for k in changed_student)
        # ShuffleNetV2's head BN stays in eval mode (RepDistiller's model_s.eval()): stats unchanged
        assert not any(k.startswith(("head.", "classifier.")) for k in changed_student)
    # main stage, the loop's optimizer over trainable_parameters(), weight decay included
    d.train()
    opt = _sgd(d.trainable_parameters())
    before = _snapshot(module)
    for _ in range(2):
        _step(opt, d.forward_train(SMALL, targets, epoch=1)[1])
    assert not _changed(before, module)
    assert all(p.grad is None for p in module.parameters())
    if name == "ft":
        assert all(p.grad is not None for p in d.translator.parameters())
    assert any(
        k.startswith(f"{type(d).init_only_modules[0]}.") for k in d.training_state()
    )  # checkpointed


# ---------------------------------------------------------------------------------------------
# End to end: the loop's pre-training stage, its metrics and resume after an init epoch
# ---------------------------------------------------------------------------------------------


def tiny_spec(method: str, params: dict, teacher: TeacherRef | None) -> RunSpec:
    return RunSpec(
        profile="smoke",
        model="resnet8",
        method=method,
        method_params=params,
        teacher=teacher,
        data=DataSpec(
            name="synthetic",
            options={"num_classes": 10, "image_size": 16, "train_size": 32, "test_size": 16},
        ),
        train=TrainSpec(
            epochs=1,
            batch_size=16,
            lr=0.05,
            milestones=(),
            lr_decay=0.1,
            momentum=0.9,
            nesterov=False,
            weight_decay=5e-4,
        ),
        seed=3,
    )


def test_loop_runs_init_stage_then_main_and_resumes_identically(tmp_path, monkeypatch):
    ref_root, resumed_root = tmp_path / "ref", tmp_path / "resumed"
    teacher_spec = tiny_spec("ce", {"ce_weight": 1.0, "kd_weight": 0.0}, None)
    train.run(teacher_spec, ref_root, device="cpu", progress=False)
    spec = tiny_spec(
        "ab", {"init_epochs": 2}, TeacherRef(model="resnet8", run_id=teacher_spec.run_id)
    )

    checkpoints: list[bytes] = []
    real_save = RunDir.save_torch

    def recording_save(self: RunDir, path: Path, obj) -> None:
        real_save(self, path, obj)
        if Path(path).name == "checkpoint.pt":
            checkpoints.append(Path(path).read_bytes())

    monkeypatch.setattr(RunDir, "save_torch", recording_save)
    reference = train.run(spec, ref_root, device="cpu", progress=False)
    monkeypatch.setattr(RunDir, "save_torch", real_save)

    run = RunDir(ref_root, spec.run_id)
    history = run.read_metrics()
    assert [(h.phase, h.epoch) for h in history] == [("init", 1), ("init", 2), ("main", 1)]
    assert all("ab" in h.losses and h.test == {} for h in history[:2])
    assert "ce" in history[2].losses and "ab" not in history[2].losses and history[2].test
    assert reference.epochs == 1
    assert len(checkpoints) == 3

    # After the init stage: the student's feature weights moved, its classifier did not.
    after_init = torch.load(_write(tmp_path / "after_init.pt", checkpoints[1]), weights_only=True)
    assert (after_init["epoch"], after_init["init_epoch"]) == (0, 2)
    torch.manual_seed(spec.seed)  # the loop builds the student right after seeding
    initial = {
        f"student.{k}": v for k, v in models.create("resnet8", num_classes=10).state_dict().items()
    }
    state = after_init["state"]
    for key in ("student.classifier.weight", "student.classifier.bias"):
        assert torch.equal(state[key], initial[key]), key
    conv_keys = [k for k in initial if k.endswith("weight") and state[k].dim() == 4]
    assert conv_keys and all(not torch.equal(state[k], initial[k]) for k in conv_keys)

    # Resume from the checkpoint written after init epoch 1: same run as without interruption.
    shutil.copytree(
        RunDir(ref_root, teacher_spec.run_id).path, RunDir(resumed_root, teacher_spec.run_id).path
    )
    resumed_run = RunDir(resumed_root, spec.run_id)
    _write(resumed_run.checkpoint_file, checkpoints[0])
    assert torch.load(resumed_run.checkpoint_file, weights_only=True)["init_epoch"] == 1
    resumed = train.run(spec, resumed_root, device="cpu", progress=False)
    assert "resuming" in resumed_run.log_file.read_text()

    def numbers(h: EpochRecord) -> dict:
        return h.model_dump(exclude={"images_per_s"})

    assert [numbers(h) for h in resumed_run.read_metrics()] == [numbers(h) for h in history]
    for key in ("best_top1", "last_top1", "last_top5"):
        assert getattr(resumed, key) == getattr(reference, key), key
    ref_state = torch.load(run.model_file, weights_only=True)
    new_state = torch.load(resumed_run.model_file, weights_only=True)
    assert set(ref_state) == set(new_state)
    assert all(torch.equal(ref_state[k], new_state[k]) for k in ref_state)


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path
