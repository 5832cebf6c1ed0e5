"""Golden values for the feature and relation losses (FitNet, AT, SP, CC, VID, RKD, PKT, NST, SimKD).

The references are written from RepDistiller's ``distiller_zoo`` definitions (SimKD: SimKD
``models/util.py``; docs/references.md §SimKD) in plain numpy float64 (explicit pooling, norms, loops;
no torch.nn.functional), so they check the library rather than restate it.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from kdbench import losses

from reference import ref_align

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
# SimKD
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (2, 8, 4, 4), (3, 16, 8, 8)])
def test_simkd_is_element_mean_of_squared_differences(shape):
    rng = np.random.default_rng(len(shape) + shape[1])
    a, b = rng.standard_normal(shape), rng.standard_normal(shape)
    got = losses.simkd(_t(a), _t(b))
    assert got.shape == ()
    assert got.item() == pytest.approx(((a - b) ** 2).sum() / a.size, rel=1e-12)


def test_simkd_by_hand_and_gradient_only_to_projected():
    # Differences (1, −2, 0, 3) → squares (1, 4, 0, 9) → mean 14 / 4 = 3.5.
    p = (
        torch.tensor([1.0, 0.0, 5.0, 3.0], dtype=torch.float64)
        .view(1, 4, 1, 1)
        .requires_grad_(True)
    )
    t = (
        torch.tensor([0.0, 2.0, 5.0, 0.0], dtype=torch.float64)
        .view(1, 4, 1, 1)
        .requires_grad_(True)
    )
    loss = losses.simkd(p, t)
    assert loss.item() == 3.5
    loss.backward()
    assert t.grad is None
    # d/dp mean((p − t)²) = 2 (p − t) / N = (2, −4, 0, 6) / 4
    assert p.grad.flatten().tolist() == [0.5, -1.0, 0.0, 1.5]
