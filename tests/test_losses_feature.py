"""Golden values for the feature and relation losses (FitNet, AT, SP, CC, VID, RKD, PKT, NST) and
the taps / pairing / extra modules of their methods.

The references are written from RepDistiller's ``distiller_zoo`` definitions in plain numpy
float64 (explicit pooling, norms, loops; no torch.nn.functional), so they check the library
rather than restate it. Extra-module parameter counts are the spec's fixtures (§5b).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from kdbench import losses, methods, models
from kdbench.errors import KdbenchError
from kdbench.methods.fitnet import ConvReg
from kdbench.models.base import Features, KDModel
from torch import nn

from reference import ref_adaptive_pool, ref_align

FEATURE_METHODS = ["fitnet", "at", "sp", "cc", "vid", "rkd", "pkt", "nst"]


# ---------------------------------------------------------------------------------------------
# Independent numpy float64 references (RepDistiller ``distiller_zoo``)
# ---------------------------------------------------------------------------------------------


def ref_unit_rows(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """x / max(‖x‖₂, eps) along the last axis."""
    norm = np.sqrt((x * x).sum(axis=-1, keepdims=True))
    return x / np.maximum(norm, eps)


def ref_fitnet(r: np.ndarray, t: np.ndarray) -> float:
    return float(((r - t) ** 2).sum() / r.size)


def ref_at(s: np.ndarray, t: np.ndarray, p: float = 2) -> float:
    s, t = ref_align(s, t)
    b = s.shape[0]
    a_s = ref_unit_rows((s**p).sum(axis=1).reshape(b, -1) / s.shape[1])
    a_t = ref_unit_rows((t**p).sum(axis=1).reshape(b, -1) / t.shape[1])
    return float(((a_s - a_t) ** 2).sum() / a_s.size)


def ref_vid(mu: np.ndarray, t: np.ndarray, a: np.ndarray, eps: float = 1e-5) -> float:
    var = (np.log(1.0 + np.exp(a)) + eps).reshape(1, -1, 1, 1)
    nll = 0.5 * ((mu - t) ** 2 / var + np.log(var))
    return float(nll.sum() / nll.size)


def ref_nst(s: np.ndarray, t: np.ndarray) -> float:
    s, t = ref_align(s, t)
    b = s.shape[0]
    s = ref_unit_rows(s.reshape(b, s.shape[1], -1))
    t = ref_unit_rows(t.reshape(b, t.shape[1], -1))

    def mean_kernel(x: np.ndarray, y: np.ndarray) -> float:
        total = 0.0
        for i in range(b):
            total += ((x[i] @ y[i].T) ** 2).sum()
        return total / (b * x.shape[1] * y.shape[1])

    return mean_kernel(t, t) + mean_kernel(s, s) - 2 * mean_kernel(s, t)


def ref_sp(s: np.ndarray, t: np.ndarray) -> float:
    b = s.shape[0]
    a_s, a_t = s.reshape(b, -1), t.reshape(b, -1)
    g_s = ref_unit_rows(a_s @ a_s.T)
    g_t = ref_unit_rows(a_t @ a_t.T)
    return float(((g_t - g_s) ** 2).sum() / (b * b))


def ref_cc(e_s: np.ndarray, e_t: np.ndarray) -> float:
    delta = np.abs(e_s - e_t)
    b = delta.shape[0]
    return float(sum((delta[i] * delta[i + 1]).sum() for i in range(b - 1)) / (b - 1))


def ref_huber_mean(x: np.ndarray, y: np.ndarray) -> float:
    d = np.abs(x - y)
    return float(np.where(d < 1.0, 0.5 * d * d, d - 0.5).sum() / d.size)


def ref_rkd(e_s: np.ndarray, e_t: np.ndarray, w_dist: float = 25.0, w_angle: float = 50.0) -> float:
    b = e_s.shape[0]
    s, t = e_s.reshape(b, -1), e_t.reshape(b, -1)

    def distances(x: np.ndarray) -> np.ndarray:
        d = np.zeros((b, b))
        for i in range(b):
            for j in range(b):
                if i != j:
                    d[i, j] = math.sqrt(max(((x[i] - x[j]) ** 2).sum(), 1e-12))
        return d / d[d > 0].mean()

    def angles(x: np.ndarray) -> np.ndarray:
        out = np.empty((b, b, b))
        for a in range(b):
            unit = ref_unit_rows(x - x[a])  # row c: (x_c − x_a)/‖·‖, zero row for c = a
            out[a] = unit @ unit.T
        return out

    return w_dist * ref_huber_mean(distances(s), distances(t)) + w_angle * ref_huber_mean(
        angles(s), angles(t)
    )


def ref_pkt(e_s: np.ndarray, e_t: np.ndarray, eps: float = 1e-7) -> float:
    def probabilities(x: np.ndarray) -> np.ndarray:
        x = x / (np.sqrt((x * x).sum(axis=1, keepdims=True)) + eps)
        x = np.where(np.isnan(x), 0.0, x)
        sim = (x @ x.T + 1.0) / 2.0
        return sim / sim.sum(axis=1, keepdims=True)

    p_s, p_t = probabilities(e_s), probabilities(e_t)
    return float((p_t * np.log((p_t + eps) / (p_s + eps))).sum() / p_t.size)


def _t(x: np.ndarray, dtype=torch.float64) -> torch.Tensor:
    return torch.tensor(x, dtype=dtype)


def _maps(seed: int, s_shape, t_shape, positive: bool = True) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    s, t = rng.standard_normal(s_shape), rng.standard_normal(t_shape)
    return (np.abs(s), np.abs(t)) if positive else (s, t)  # post-ReLU-like maps by default


# ---------------------------------------------------------------------------------------------
# Pure losses vs the references: float64 at 1e-10, float32 at a float32 tolerance
# ---------------------------------------------------------------------------------------------

MAP_PAIRS = [
    ((4, 3, 8, 8), (4, 5, 8, 8)),  # same size
    ((4, 3, 8, 8), (4, 6, 4, 4)),  # student larger: student pooled
    ((3, 4, 4, 4), (3, 2, 16, 16)),  # teacher larger: teacher pooled
    ((2, 5, 6, 6), (2, 3, 4, 4)),  # non-integer ratio (adaptive bins overlap)
]


def _check(
    got64: torch.Tensor,
    got32: torch.Tensor,
    expected: float,
    expected32: float,
    rtol32: float = 2e-5,
    atol32: float = 1e-7,
):
    assert got64.dtype == torch.float64 and got64.shape == ()
    np.testing.assert_allclose(got64.item(), expected, rtol=1e-10, atol=1e-13)
    assert got32.dtype == torch.float32 and got32.shape == ()
    np.testing.assert_allclose(got32.item(), expected32, rtol=rtol32, atol=atol32)


def _round32(*xs: np.ndarray) -> list[np.ndarray]:
    """Inputs rounded to float32 first, so the float32 check measures only the computation."""
    return [x.astype(np.float32).astype(np.float64) for x in xs]


@pytest.mark.parametrize(("s_shape", "t_shape"), MAP_PAIRS)
@pytest.mark.parametrize("p", [2, 3])
def test_at_matches_reference(s_shape, t_shape, p):
    s, t = _maps(10, s_shape, t_shape)
    s32, t32 = _round32(s, t)
    _check(
        losses.at(_t(s), _t(t), p),
        losses.at(_t(s32, torch.float32), _t(t32, torch.float32), p),
        ref_at(s, t, p),
        ref_at(s32, t32, p),
    )


@pytest.mark.parametrize(("s_shape", "t_shape"), MAP_PAIRS)
def test_nst_matches_reference(s_shape, t_shape):
    s, t = _maps(11, s_shape, t_shape)
    s32, t32 = _round32(s, t)
    _check(
        losses.nst(_t(s), _t(t)),
        losses.nst(_t(s32, torch.float32), _t(t32, torch.float32)),
        ref_nst(s, t),
        ref_nst(s32, t32),
        atol32=1e-6,
    )


@pytest.mark.parametrize(
    ("s_shape", "t_shape"),
    [((4, 3, 4, 4), (4, 6, 2, 2)), ((8, 16, 1, 1), (8, 5, 1, 1)), ((6, 2, 8, 8), (6, 2, 8, 8))],
)
@pytest.mark.parametrize("positive", [True, False])
def test_sp_matches_reference(s_shape, t_shape, positive):
    s, t = _maps(12, s_shape, t_shape, positive)
    s32, t32 = _round32(s, t)
    _check(
        losses.sp(_t(s), _t(t)),
        losses.sp(_t(s32, torch.float32), _t(t32, torch.float32)),
        ref_sp(s, t),
        ref_sp(s32, t32),
        atol32=1e-6,
    )


@pytest.mark.parametrize("shape", [(4, 5, 3, 3), (2, 1, 1, 1), (3, 7, 8, 8)])
def test_fitnet_matches_reference(shape):
    r, t = _maps(13, shape, shape, positive=False)
    r32, t32 = _round32(r, t)
    _check(
        losses.fitnet(_t(r), _t(t)),
        losses.fitnet(_t(r32, torch.float32), _t(t32, torch.float32)),
        ref_fitnet(r, t),
        ref_fitnet(r32, t32),
    )


@pytest.mark.parametrize("shape", [(4, 5, 4, 4), (2, 3, 1, 1), (3, 8, 2, 2)])
@pytest.mark.parametrize("eps", [1e-5, 0.0])
def test_vid_matches_reference(shape, eps):
    rng = np.random.default_rng(14)
    mu, t = rng.standard_normal(shape), np.abs(rng.standard_normal(shape))
    a = rng.standard_normal(shape[1]) * 2.0
    mu32, t32, a32 = _round32(mu, t, a)
    got32 = losses.vid(_t(mu32, torch.float32), _t(t32, torch.float32), _t(a32, torch.float32), eps)
    _check(
        losses.vid(_t(mu), _t(t), _t(a), eps),
        got32,
        ref_vid(mu, t, a, eps),
        ref_vid(mu32, t32, a32, eps),
        atol32=1e-6,
    )


@pytest.mark.parametrize(("b", "d"), [(5, 7), (2, 3), (16, 128)])
def test_cc_matches_reference(b, d):
    rng = np.random.default_rng(15)
    e_s, e_t = rng.standard_normal((b, d)), rng.standard_normal((b, d))
    s32, t32 = _round32(e_s, e_t)
    _check(
        losses.cc(_t(e_s), _t(e_t)),
        losses.cc(_t(s32, torch.float32), _t(t32, torch.float32)),
        ref_cc(e_s, e_t),
        ref_cc(s32, t32),
    )


@pytest.mark.parametrize("shape", [(6, 10), (5, 3), (4, 3, 1, 1), (8, 64)])
@pytest.mark.parametrize(("w_dist", "w_angle"), [(25.0, 50.0), (1.0, 0.0), (0.0, 2.0)])
def test_rkd_matches_reference(shape, w_dist, w_angle):
    rng = np.random.default_rng(16)
    e_s, e_t = rng.standard_normal(shape), rng.standard_normal(shape) * 3.0
    s32, t32 = _round32(e_s, e_t)
    got32 = losses.rkd(_t(s32, torch.float32), _t(t32, torch.float32), w_dist, w_angle)
    expected = ref_rkd(e_s, e_t, w_dist, w_angle)
    _check(
        losses.rkd(_t(e_s), _t(e_t), w_dist, w_angle),
        got32,
        expected,
        ref_rkd(s32, t32, w_dist, w_angle),
        rtol32=1e-4,
        atol32=1e-6,
    )


def test_rkd_default_inner_weights_are_25_and_50():
    rng = np.random.default_rng(17)
    e_s, e_t = _t(rng.standard_normal((5, 4))), _t(rng.standard_normal((5, 4)))
    torch.testing.assert_close(
        losses.rkd(e_s, e_t), losses.rkd(e_s, e_t, 25.0, 50.0), rtol=0, atol=0
    )


@pytest.mark.parametrize("shape", [(6, 10), (8, 4), (3, 256)])
def test_pkt_matches_reference(shape):
    rng = np.random.default_rng(18)
    e_s, e_t = np.abs(rng.standard_normal(shape)), np.abs(rng.standard_normal(shape))
    e_s[0] = 0.0  # an all-zero row: normalised to 0 (no NaN), similarity (0 + 1)/2
    s32, t32 = _round32(e_s, e_t)
    got32 = losses.pkt(_t(s32, torch.float32), _t(t32, torch.float32))
    _check(
        losses.pkt(_t(e_s), _t(e_t)),
        got32,
        ref_pkt(e_s, e_t),
        ref_pkt(s32, t32),
        rtol32=1e-3,
        atol32=1e-7,
    )


# ---------------------------------------------------------------------------------------------
# Hand-computed literal cases
# ---------------------------------------------------------------------------------------------


def test_fitnet_by_hand():
    r = _t(np.array([1.0, 2.0, 3.0, 4.0]).reshape(1, 1, 2, 2))
    assert losses.fitnet(r, torch.zeros_like(r)).item() == pytest.approx(
        7.5, abs=1e-15
    )  # (1+4+9+16)/4


def test_at_by_hand():
    # Student attention (1, 0), teacher (0, 1): squared differences (1, 1), mean 1.
    s = _t(np.array([1.0, 0.0]).reshape(1, 1, 1, 2))
    t = _t(np.array([0.0, 1.0]).reshape(1, 1, 1, 2))
    assert losses.at(s, t).item() == pytest.approx(1.0, abs=1e-15)
    # Channel mean of f² before normalising: channels (3, 0) and (0, 4) → (4.5, 8) → unit vector.
    s2 = _t(np.array([[3.0, 0.0], [0.0, 4.0]]).reshape(1, 2, 1, 2))
    t2 = _t(np.array([1.0, 0.0]).reshape(1, 1, 1, 2))
    n = math.hypot(4.5, 8.0)
    assert losses.at(s2, t2).item() == pytest.approx(
        ((4.5 / n - 1.0) ** 2 + (8.0 / n) ** 2) / 2, abs=1e-15
    )


def test_vid_by_hand():
    # a = log(e − 1) → softplus(a) = 1; eps = 0 → σ² = 1: ½(μ − t)² + ½·log 1 = ½·4 = 2.
    mu, t = _t(np.full((1, 1, 1, 1), 2.0)), _t(np.zeros((1, 1, 1, 1)))
    a = _t(np.array([math.log(math.e - 1.0)]))
    assert losses.vid(mu, t, a, eps=0.0).item() == pytest.approx(2.0, abs=1e-14)
    # σ² = 5 exactly (init of the method: softplus(a) = 5 − eps, plus eps): ½(4/5 + log 5).
    a5 = _t(np.array([math.log(math.exp(5.0 - 1e-5) - 1.0)]))
    assert losses.vid(mu, t, a5).item() == pytest.approx(
        0.5 * (4.0 / 5.0 + math.log(5.0)), abs=1e-12
    )


def test_nst_by_hand():
    # One sample, one channel each, orthogonal unit spatial vectors: K(t,t) = K(s,s) = 1, K(s,t) = 0.
    s = _t(np.array([1.0, 0.0]).reshape(1, 1, 1, 2))
    t = _t(np.array([0.0, 3.0]).reshape(1, 1, 1, 2))
    assert losses.nst(s, t).item() == pytest.approx(2.0, abs=1e-15)
    assert losses.nst(t, t).item() == pytest.approx(0.0, abs=1e-15)


def test_sp_by_hand():
    # G_s = I (rows already unit); G_t = all-ones → rows (1/√2, 1/√2): ‖G_t − G_s‖² = 4 − 2√2, /B² = 1 − √2/2.
    s = _t(np.array([[1.0, 0.0], [0.0, 1.0]]))
    t = _t(np.array([[1.0, 0.0], [1.0, 0.0]]))
    assert losses.sp(s, t).item() == pytest.approx(1.0 - math.sqrt(2.0) / 2.0, abs=1e-15)


def test_cc_by_hand():
    # Δ = (1, 2, 3): (1·2 + 2·3) / 2 = 4; consecutive samples only (1·3 is not counted).
    e_s = _t(np.array([[1.0], [2.0], [3.0]]))
    assert losses.cc(e_s, torch.zeros_like(e_s)).item() == pytest.approx(4.0, abs=1e-15)


def test_rkd_by_hand():
    h = lambda x: 0.5 * x * x  # noqa: E731  (Huber below 1)
    equilateral = _t(np.array([[0.0, 0.0], [1.0, 0.0], [0.5, math.sqrt(3.0) / 2.0]]))
    right = _t(np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]]))
    # Scale and rotation invariant: a rotated, 3× larger copy gives 0.
    rot = torch.tensor([[0.6, -0.8], [0.8, 0.6]], dtype=torch.float64)
    assert losses.rkd(equilateral, 3.0 * equilateral @ rot).item() == pytest.approx(0.0, abs=1e-12)
    # Student equilateral (all distances 1, all angles 60°) vs teacher right isosceles triangle:
    # teacher distances 1, 1, √2 over mean m = (2 + √2)/3; angles 90° at the right angle, 45° at the others.
    m = (2.0 + math.sqrt(2.0)) / 3.0
    dist = (4 * h(1.0 - 1.0 / m) + 2 * h(1.0 - math.sqrt(2.0) / m)) / 9.0
    # B³ = 27 entries: the 3 (b = c ≠ a) ones agree (cos 1), the 12 with b or c = a are 0 on both sides.
    angle = (2 * h(0.5 - 0.0) + 4 * h(0.5 - 1.0 / math.sqrt(2.0))) / 27.0
    assert losses.rkd(equilateral, right).item() == pytest.approx(
        25.0 * dist + 50.0 * angle, abs=1e-12
    )


def test_pkt_by_hand():
    # Student cosines I → (I+1)/2 → rows (2/3, 1/3); teacher cosines all 1 → rows (1/2, 1/2).
    eps = 1e-7
    s = _t(np.array([[1.0, 0.0], [0.0, 1.0]]))
    t = _t(np.array([[1.0, 0.0], [2.0, 0.0]]))
    expected = (
        0.5 * math.log((0.5 + eps) / (2 / 3 + eps)) + 0.5 * math.log((0.5 + eps) / (1 / 3 + eps))
    ) / 2
    assert losses.pkt(s, t).item() == pytest.approx(
        expected, rel=1e-6
    )  # 1e-7 in the norms shifts ~1e-7
    assert losses.pkt(t, t).item() == pytest.approx(0.0, abs=1e-15)


# ---------------------------------------------------------------------------------------------
# Gradients: nothing reaches the teacher tensors
# ---------------------------------------------------------------------------------------------


def _grad_case(name: str, s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    if name == "vid":
        return losses.vid(s, t, torch.zeros(s.shape[1], dtype=s.dtype))
    return getattr(losses, name)(s, t)


@pytest.mark.parametrize(
    ("name", "s_shape", "t_shape"),
    [
        ("fitnet", (3, 4, 4, 4), (3, 4, 4, 4)),
        ("at", (3, 4, 8, 8), (3, 2, 4, 4)),
        ("nst", (3, 4, 4, 4), (3, 2, 8, 8)),
        ("vid", (3, 4, 4, 4), (3, 4, 4, 4)),
        ("sp", (3, 4, 4, 4), (3, 2, 2, 2)),
        ("rkd", (5, 6), (5, 6)),
        ("pkt", (5, 6), (5, 8)),
    ],
)
def test_gradient_reaches_student_not_teacher(name, s_shape, t_shape):
    torch.manual_seed(0)
    s = torch.rand(s_shape, dtype=torch.float64, requires_grad=True)
    t = torch.rand(t_shape, dtype=torch.float64, requires_grad=True)
    _grad_case(name, s, t).backward()
    assert t.grad is None
    assert s.grad is not None and torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0


def test_cc_gradient_reaches_both_embeddings():
    # CC's teacher-side input is the output of a *trainable* embedding (both LinearEmbeds are in
    # RepDistiller's optimizer), so it is deliberately not detached; the method detaches the
    # teacher features before embedding them (test_methods_do_not_backprop_into_teacher_features).
    torch.manual_seed(0)
    e_s = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    e_t = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    losses.cc(e_s, e_t).backward()
    assert e_s.grad.abs().sum() > 0 and e_t.grad.abs().sum() > 0


def test_vid_gradient_reaches_log_scale():
    torch.manual_seed(0)
    a = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    losses.vid(
        torch.randn(2, 3, 2, 2, dtype=torch.float64),
        torch.randn(2, 3, 2, 2, dtype=torch.float64),
        a,
    ).backward()
    assert a.grad is not None and (a.grad != 0).all()


def test_all_exported():
    for name in FEATURE_METHODS:
        assert callable(getattr(losses, name)), name
    assert {"fitnet", "at", "vid", "nst", "simkd"} <= set(losses.feature.__all__)
    assert {"sp", "cc", "rkd", "pkt"} <= set(losses.relation.__all__)


# ---------------------------------------------------------------------------------------------
# Methods: taps, pairing, weights, variants and extra modules
# ---------------------------------------------------------------------------------------------

NUM_CLASSES = 10
_MODELS: dict[str, KDModel] = {}


def calibrated(name: str) -> KDModel:
    """A random network (cached) whose BN running statistics were calibrated on random images."""
    if name not in _MODELS:
        torch.manual_seed(0)
        net = models.create(name, num_classes=NUM_CLASSES)
        bns = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        for bn in bns:
            bn.momentum = None
        net.train()
        with torch.no_grad():
            net(torch.randn(16, 3, 32, 32))
        _MODELS[name] = net.eval()
    return _MODELS[name]


def build(
    name: str, student: str, teacher: str, variant: str | None = None, **overrides
) -> methods.Distiller:
    import copy

    cls = methods.get(name)
    params = methods.resolve_params(name, variant, overrides)
    torch.manual_seed(3)
    images = torch.randn(2, 3, 32, 32)
    return cls(
        copy.deepcopy(calibrated(student)), copy.deepcopy(calibrated(teacher)), params, images
    )


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# docs/references.md §Loss weights of the baselines (fixtures): (teacher, student) → (FitNet f2 regressor, CC, VID).
FIXTURES = {
    ("resnet32x4", "resnet8x4"): (16_768, 65_792, 258_496),
    ("wrn_40_2", "wrn_16_2"): (4_288, 33_024, 64_736),
    ("resnet56", "resnet20"): (1_120, 16_640, 16_240),
    ("resnet32x4", "ShuffleV2"): (475_520, 164_096, 328_384),
    ("vgg13", "MobileNetV2"): (4_864, 229_632, 1_325_952),
}


@pytest.mark.parametrize(("teacher", "student"), list(FIXTURES))
def test_extra_parameter_counts_match_spec_fixtures(teacher, student):
    fitnet_n, cc_n, vid_n = FIXTURES[teacher, student]
    assert n_params(build("fitnet", student, teacher).regressor) == fitnet_n
    d = build("cc", student, teacher)
    assert n_params(d.embed_s) + n_params(d.embed_t) == cc_n
    assert n_params(build("vid", student, teacher).regressors) == vid_n


def test_defaults_and_variants():
    betas = {
        "fitnet": 100.0,
        "at": 1000.0,
        "sp": 3000.0,
        "cc": 0.02,
        "vid": 1.0,
        "rkd": 1.0,
        "pkt": 30000.0,
        "nst": 50.0,
    }
    for name, beta in betas.items():
        default = methods.resolve_params(name, None, {})
        assert (default.ce_weight, default.kd_weight, default.weight, default.kd_temperature) == (
            1.0,
            0.0,
            beta,
            4.0,
        ), name
        assert methods.resolve_params(name, "crd", {}) == default, name
        if name == "nst":
            assert "simkd" not in methods.get(name).variants  # NST is not in the SimKD/SemCKD code
            continue
        sk = methods.resolve_params(name, "simkd", {})
        assert (sk.ce_weight, sk.kd_weight, sk.weight, sk.kd_temperature) == (
            1.0,
            1.0,
            beta,
            4.0,
        ), name
    assert methods.resolve_params("fitnet", None, {}).hint_layer == 2
    sk = methods.resolve_params("fitnet", "simkd", {})
    assert (sk.hint_layer, sk.regressor) == (1, "simkd")
    rkd = methods.resolve_params("rkd", None, {})
    assert (rkd.w_dist, rkd.w_angle) == (25.0, 50.0)
    assert methods.resolve_params("cc", None, {}).feat_dim == 128
    assert methods.resolve_params("at", None, {}).p == 2
    assert methods.resolve_params("vid", "mdistiller", {}).trainable_variance is False
    # The SimKD Table 1 rows validate (field `weight` = β).
    for name, beta in (("fitnet", 100), ("at", 1000), ("sp", 3000), ("vid", 1)):
        methods.resolve_params(name, None, {"ce_weight": 1, "kd_weight": 1, "weight": beta})


@pytest.mark.parametrize(
    ("h_s", "h_t", "kind", "kernel", "stride", "padding"),
    [
        (8, 4, nn.Conv2d, (3, 3), (2, 2), (1, 1)),
        (4, 8, nn.ConvTranspose2d, (4, 4), (2, 2), (1, 1)),
        (6, 4, nn.Conv2d, (3, 3), (1, 1), (0, 0)),
        (4, 4, nn.Conv2d, (1, 1), (1, 1), (0, 0)),
        (16, 4, nn.Conv2d, (13, 13), (1, 1), (0, 0)),
    ],
)
def test_fitnet_regressor_cases(h_s, h_t, kind, kernel, stride, padding):
    reg = ConvReg((2, 3, h_s, h_s), (2, 5, h_t, h_t), fallback=False)
    conv = reg.conv
    assert type(conv) is kind and conv.bias is not None
    assert (conv.kernel_size, conv.stride, conv.padding) == (kernel, stride, padding)
    assert reg.pool_teacher_to is None
    assert reg(torch.randn(2, 3, h_s, h_s)).shape == (2, 5, h_t, h_t)


def test_fitnet_regressor_smaller_student_map():
    with pytest.raises(KdbenchError, match="regressor='simkd'"):
        ConvReg((2, 3, 4, 4), (2, 5, 16, 16), fallback=False)
    reg = ConvReg(
        (2, 3, 4, 4), (2, 5, 16, 16), fallback=True
    )  # SimKD code: 3×3 pad 1, teacher pooled
    assert (reg.conv.kernel_size, reg.conv.padding, reg.pool_teacher_to) == ((3, 3), (1, 1), 4)
    assert reg(torch.randn(2, 3, 4, 4)).shape == (2, 5, 4, 4)


class TinyNet(KDModel):
    """A stand-in network with chosen tap shapes: stage i = 1×1 conv of the input, pooled to size."""

    def __init__(self, taps: list[tuple[int, int]]):
        super().__init__()
        self.taps = taps
        self.convs = nn.ModuleList(nn.Conv2d(3, c, 1) for c, _ in taps)
        self.classifier = nn.Linear(taps[-1][0], NUM_CLASSES)

    def forward_features(self, x: torch.Tensor) -> Features:
        stages = [
            F.relu(F.adaptive_avg_pool2d(conv(x), h)) for conv, (_, h) in zip(self.convs, self.taps)
        ]
        pooled = stages[-1].mean(dim=(2, 3))
        return Features(stages, stages, stages[-1], pooled, self.classifier(pooled))


def test_fitnet_simkd_fallback_pools_the_teacher_map():
    torch.manual_seed(0)
    student, teacher = TinyNet([(2, 8), (3, 4)]), TinyNet([(2, 8), (5, 16)])
    images = torch.randn(4, 3, 32, 32)
    with pytest.raises(KdbenchError, match="TinyNet"):
        methods.get("fitnet")(
            student, teacher, methods.resolve_params("fitnet", None, {"hint_layer": 1}), images
        )
    params = methods.resolve_params("fitnet", "simkd", {})
    d = methods.get("fitnet")(student, teacher, params, images).double().eval()
    x = images.double()
    _, terms = d.forward_train(x, torch.zeros(4, dtype=torch.long), epoch=1)
    with torch.no_grad():
        regressed = d.regressor(student.forward_features(x).stages[1]).numpy()
        target = ref_adaptive_pool(teacher.forward_features(x).stages[1].numpy(), 4)
    np.testing.assert_allclose(
        terms["fitnet"].item(), 100.0 * ref_fitnet(regressed, target), rtol=1e-10
    )


def test_fitnet_hint_layer_must_exist_in_both():
    with pytest.raises(KdbenchError, match="hint_layer 4 does not exist"):
        build(
            "fitnet", "vgg8", "resnet32x4", hint_layer=4
        )  # VGG has f4, the CIFAR ResNet stops at f3


@pytest.mark.parametrize(("variant", "layer"), [(None, 2), ("simkd", 1)])
def test_fitnet_hint_tap(variant, layer):
    d = build("fitnet", "ShuffleV2", "resnet32x4", variant)
    # ShuffleV2 f1 116@16 / f2 232@8 → ResNet-32x4 f1 64@32 / f2 128@16: transposed conv either way.
    assert isinstance(d.regressor.conv, nn.ConvTranspose2d)
    assert (d.regressor.conv.in_channels, d.regressor.conv.out_channels) == {
        1: (116, 64),
        2: (232, 128),
    }[layer]


def test_vid_variance_init_and_mdistiller_variant():
    d = build("vid", "resnet8x4", "resnet32x4")
    for reg in d.regressors:
        assert isinstance(reg.log_scale, nn.Parameter)
        var = torch.log(1.0 + torch.exp(reg.log_scale.detach().double())) + 1e-5
        torch.testing.assert_close(var, torch.full_like(var, 5.0), rtol=1e-6, atol=1e-6)
        convs = [m for m in reg.regressor if isinstance(m, nn.Conv2d)]
        assert len(convs) == 3 and all(c.bias is None for c in convs)
        assert isinstance(reg.regressor[-1], nn.Conv2d)  # no ReLU after the last conv
    frozen = build("vid", "resnet8x4", "resnet32x4", "mdistiller")
    trainable = {id(p) for p in frozen.trainable_parameters()}
    for i, reg in enumerate(frozen.regressors):
        assert not isinstance(reg.log_scale, nn.Parameter) and id(reg.log_scale) not in trainable
        assert f"regressors.{i}.log_scale" in frozen.inference_state()


# Method terms vs the numpy references on real taps, float64 end to end. Teacher resnet32x4 has
# f1..f3, student vgg8 has f1..f4: front-aligned pairing uses (f1, f1), (f2, f2), (f3, f3) and
# drops the student's f4; the maps differ in size, so every pair is pooled.


@pytest.fixture(scope="module")
def batch64():
    torch.manual_seed(4)
    return torch.randn(6, 3, 32, 32, dtype=torch.float64)


def method_terms(
    name: str,
    images: torch.Tensor,
    student: str = "vgg8",
    teacher: str = "resnet32x4",
    variant: str | None = None,
):
    d = build(name, student, teacher, variant).double().eval()
    targets = torch.arange(len(images)) % NUM_CLASSES
    _, terms = d.forward_train(images, targets, epoch=1)
    with torch.no_grad():
        fs, ft = d.student.forward_features(images), d.teacher.forward_features(images)
    return d, terms, fs, ft


def _np(x: torch.Tensor) -> np.ndarray:
    return x.detach().numpy()


def test_at_method_sums_front_aligned_pairs(batch64):
    _, terms, fs, ft = method_terms("at", batch64)
    assert len(fs.stages) == 5 and len(ft.stages) == 4
    expected = sum(ref_at(_np(fs.stages[i]), _np(ft.stages[i])) for i in (1, 2, 3))
    assert set(terms) == {"ce", "at"}
    np.testing.assert_allclose(terms["at"].item(), 1000.0 * expected, rtol=1e-10)


def test_nst_method_sums_front_aligned_pairs(batch64):
    _, terms, fs, ft = method_terms("nst", batch64)
    expected = sum(ref_nst(_np(fs.stages[i]), _np(ft.stages[i])) for i in (1, 2, 3))
    np.testing.assert_allclose(terms["nst"].item(), 50.0 * expected, rtol=1e-10)


def test_sp_method_uses_last_spatial_maps(batch64):
    _, terms, fs, ft = method_terms("sp", batch64)
    expected = ref_sp(
        _np(fs.stages[-1]), _np(ft.stages[-1])
    )  # vgg8 f4 512@4 vs resnet32x4 f3 256@8
    np.testing.assert_allclose(terms["sp"].item(), 3000.0 * expected, rtol=1e-10)


@pytest.mark.parametrize("name", ["rkd", "pkt"])
def test_rkd_pkt_methods_use_pooled_vectors(name, batch64):
    _, terms, fs, ft = method_terms(name, batch64)
    ref, beta = {"rkd": (ref_rkd, 1.0), "pkt": (ref_pkt, 30000.0)}[name]
    np.testing.assert_allclose(
        terms[name].item(), beta * ref(_np(fs.pooled), _np(ft.pooled)), rtol=1e-10
    )


def test_cc_method_embeds_both_pooled_vectors(batch64):
    d, terms, fs, ft = method_terms("cc", batch64)
    with torch.no_grad():
        e_s, e_t = d.embed_s(fs.pooled), d.embed_t(ft.pooled)
    assert (d.embed_s.in_features, d.embed_t.in_features, d.embed_s.out_features) == (512, 256, 128)
    np.testing.assert_allclose(terms["cc"].item(), 0.02 * ref_cc(_np(e_s), _np(e_t)), rtol=1e-10)


def test_vid_method_sums_front_aligned_pairs(batch64):
    d, terms, fs, ft = method_terms("vid", batch64)
    assert len(d.regressors) == 3
    expected = 0.0
    for i, reg in zip((1, 2, 3), d.regressors):
        s, t = ref_align(_np(fs.stages[i]), _np(ft.stages[i]))
        with torch.no_grad():
            mu = _np(reg(_t(s)))
        expected += ref_vid(mu, t, _np(reg.log_scale))
    np.testing.assert_allclose(terms["vid"].item(), expected, rtol=1e-10)


@pytest.mark.parametrize(("variant", "layer", "kd"), [(None, 2, False), ("simkd", 1, True)])
def test_fitnet_method_terms(variant, layer, kd, batch64):
    d, terms, fs, ft = method_terms("fitnet", batch64, variant=variant)
    assert set(terms) == ({"ce", "kd", "fitnet"} if kd else {"ce", "fitnet"})
    with torch.no_grad():
        regressed = _np(d.regressor(fs.stages[layer]))
    np.testing.assert_allclose(
        terms["fitnet"].item(), 100.0 * ref_fitnet(regressed, _np(ft.stages[layer])), rtol=1e-10
    )


@pytest.mark.parametrize("name", FEATURE_METHODS)
def test_methods_do_not_backprop_into_teacher_features(name):
    d = build(name, "resnet8x4", "resnet32x4")
    images = torch.randn(4, 3, 32, 32)
    fs = d.student.forward_features(images)
    with torch.no_grad():
        ft = d.teacher.forward_features(images)
    leaves = Features(
        [x.clone().requires_grad_() for x in ft.stages],
        [x.clone().requires_grad_() for x in ft.preact],
        ft.head_map.clone().requires_grad_(),
        ft.pooled.clone().requires_grad_(),
        ft.logits.clone().requires_grad_(),
    )
    _, terms = d.distill(fs, leaves, methods.Step(torch.zeros(4, dtype=torch.long), 1))
    assert set(terms) == {name}
    terms[name].backward()
    for x in [*leaves.stages, *leaves.preact, leaves.head_map, leaves.pooled, leaves.logits]:
        assert x.grad is None
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in d.student.parameters())
