"""Golden values for the pure distillation losses (``kdbench.losses``).

The references below are written from the definitions of the papers and the authors' code (KD: RepDistiller
``distiller_zoo/KD.py``; DIST: image_classification_sota ``lib/models/losses/dist_kd.py``; SimKD: SimKD
``models/util.py``; docs/references.md §DIST, §SimKD) in plain numpy float64 — explicit max-subtracted softmax, explicit sums and
means, no torch.nn.functional — so they check the library rather than restate it.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from kdbench import losses

EPS = 1e-8  # DIST: added to the product of the two norms (methods-seed.md §4.1)


# ---------------------------------------------------------------------------------------------
# Independent numpy float64 references
# ---------------------------------------------------------------------------------------------


def ref_log_softmax(z: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax with max subtraction."""
    shifted = z - z.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def ref_softmax(z: np.ndarray) -> np.ndarray:
    shifted = z - z.max(axis=1, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=1, keepdims=True)


def ref_kd(z_s: np.ndarray, z_t: np.ndarray, temperature: float) -> float:
    """T² · (1/B) Σ_i Σ_c p_t,ic (log p_t,ic − log p_s,ic), p = softmax(z / T)."""
    log_p_s = ref_log_softmax(z_s / temperature)
    log_p_t = ref_log_softmax(z_t / temperature)
    p_t = np.exp(log_p_t)
    per_sample = (p_t * (log_p_t - log_p_s)).sum(axis=1)
    return temperature**2 * per_sample.sum() / z_s.shape[0]


def ref_pearson(u: np.ndarray, v: np.ndarray) -> float:
    """ρ(u, v) = ⟨u', v'⟩ / (‖u'‖·‖v'‖ + ε), u' = u − mean(u)."""
    u = u - u.sum() / u.size
    v = v - v.sum() / v.size
    return float((u * v).sum() / (math.sqrt((u * u).sum()) * math.sqrt((v * v).sum()) + EPS))


def ref_dist_parts(z_s: np.ndarray, z_t: np.ndarray, temperature: float) -> tuple[float, float]:
    """(inter, intra) on Y = softmax(z / τ): inter over the classes of each sample, intra over the
    samples of each class."""
    y_s, y_t = ref_softmax(z_s / temperature), ref_softmax(z_t / temperature)
    b, c = y_s.shape
    inter = 1.0 - sum(ref_pearson(y_s[i, :], y_t[i, :]) for i in range(b)) / b
    intra = 1.0 - sum(ref_pearson(y_s[:, j], y_t[:, j]) for j in range(c)) / c
    return inter, intra


def ref_dist(
    z_s: np.ndarray, z_t: np.ndarray, beta: float, gamma: float, temperature: float
) -> float:
    inter, intra = ref_dist_parts(z_s, z_t, temperature)
    return temperature**2 * (beta * inter + gamma * intra)


def _logits(rng: np.random.Generator, b: int, c: int, scale: float) -> np.ndarray:
    return rng.standard_normal((b, c)) * scale


def _t(a: np.ndarray, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return torch.tensor(a, dtype=dtype)


# ---------------------------------------------------------------------------------------------
# KD
# ---------------------------------------------------------------------------------------------

KD_CASES = [  # (batch, classes, temperature, logit scale)
    (1, 2, 1.0, 1.0),
    (1, 10, 4.0, 3.0),
    (3, 2, 4.0, 2.0),
    (8, 10, 1.0, 2.0),
    (8, 10, 4.0, 2.0),
    (16, 100, 4.0, 5.0),
    (16, 100, 1.0, 5.0),
    (5, 7, 2.5, 1.0),
    (4, 100, 1.0, 40.0),  # very peaked: log-softmax must be computed stably
]


@pytest.mark.parametrize(("b", "c", "temperature", "scale"), KD_CASES)
def test_kd_matches_float64_reference(b, c, temperature, scale):
    rng = np.random.default_rng(1000 * b + c)
    z_s, z_t = _logits(rng, b, c, scale), _logits(rng, b, c, scale)
    got = losses.kd(_t(z_s), _t(z_t), temperature)
    assert got.dtype == torch.float64 and got.shape == ()
    assert got.item() == pytest.approx(ref_kd(z_s, z_t, temperature), rel=1e-10, abs=1e-10)


@pytest.mark.parametrize(("b", "c", "temperature", "scale"), KD_CASES)
def test_kd_float32_close_to_float64_reference(b, c, temperature, scale):
    rng = np.random.default_rng(7 + 1000 * b + c)
    z_s, z_t = _logits(rng, b, c, scale), _logits(rng, b, c, scale)
    # Round the inputs to float32 first so only the computation's precision is measured.
    z_s, z_t = z_s.astype(np.float32).astype(np.float64), z_t.astype(np.float32).astype(np.float64)
    got = losses.kd(_t(z_s, torch.float32), _t(z_t, torch.float32), temperature)
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(
        ref_kd(z_s, z_t, temperature), rel=1e-5, abs=1e-5 * temperature**2
    )


def test_kd_identical_logits_is_zero():
    z = torch.randn(6, 10, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 3
    for temperature in (1.0, 4.0):
        assert losses.kd(z, z.clone(), temperature).item() == 0.0


def test_kd_two_class_by_hand():
    # z_s = (0, 0) → p_s = (1/2, 1/2);  z_t = (ln 3, 0) → p_t = (3/4, 1/4);  T = 1:
    # KL(p_t‖p_s) = 3/4·ln((3/4)/(1/2)) + 1/4·ln((1/4)/(1/2)) = 3/4·ln 3 − 3/4·ln 2 − 1/4·ln 2
    #             = 3/4·ln 3 − ln 2 = 0.823959216501 − 0.693147180560 = 0.130812035941
    z_s = torch.tensor([[0.0, 0.0]], dtype=torch.float64)
    z_t = torch.tensor([[math.log(3.0), 0.0]], dtype=torch.float64)
    assert losses.kd(z_s, z_t, 1.0).item() == pytest.approx(0.130812035941137, rel=1e-12)
    # T = 2 with z_t = (2 ln 3, 0) gives the same p_t, times T² = 4:
    # 4·(3/4·ln 3 − ln 2) = 3 ln 3 − 4 ln 2 = 0.523248143765
    z_t2 = torch.tensor([[2 * math.log(3.0), 0.0]], dtype=torch.float64)
    assert losses.kd(z_s, z_t2, 2.0).item() == pytest.approx(0.523248143764548, rel=1e-12)
    # "batchmean": a second sample with identical logits (KL 0) halves the value:
    # (0.130812035941 + 0) / 2 = 0.065406017971
    z_s_b = torch.tensor([[0.0, 0.0], [1.0, 1.0]], dtype=torch.float64)
    z_t_b = torch.tensor([[math.log(3.0), 0.0], [1.0, 1.0]], dtype=torch.float64)
    assert losses.kd(z_s_b, z_t_b, 1.0).item() == pytest.approx(0.0654060179705685, rel=1e-12)


def test_kd_direction_is_kl_teacher_to_student():
    # KL(p_t‖p_s) is not symmetric: swapping the arguments must change the value.
    # z_s = (ln 3, 0), z_t = (0, 0): KL((1/2,1/2)‖(3/4,1/4)) = 1/2·ln(2/3) + 1/2·ln 2
    #   = ln 2 − 1/2·ln 3 = 0.693147180560 − 0.549306144334 = 0.143841036226
    z_s = torch.tensor([[math.log(3.0), 0.0]], dtype=torch.float64)
    z_t = torch.tensor([[0.0, 0.0]], dtype=torch.float64)
    assert losses.kd(z_s, z_t, 1.0).item() == pytest.approx(0.143841036225890, rel=1e-12)


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_kd_gradient_only_to_student_and_matches_closed_form(temperature):
    rng = np.random.default_rng(3)
    b, c = 5, 10
    z_s_np, z_t_np = _logits(rng, b, c, 2.0), _logits(rng, b, c, 2.0)
    z_s = _t(z_s_np).requires_grad_(True)
    z_t = _t(z_t_np).requires_grad_(True)
    losses.kd(z_s, z_t, temperature).backward()
    assert z_t.grad is None
    # d/dz_s [T²/B Σ KL] = T²/B · (p_s − p_t)/T = T/B · (p_s − p_t)
    expected = (
        temperature / b * (ref_softmax(z_s_np / temperature) - ref_softmax(z_t_np / temperature))
    )
    np.testing.assert_allclose(z_s.grad.numpy(), expected, rtol=1e-10, atol=1e-13)


# ---------------------------------------------------------------------------------------------
# DIST
# ---------------------------------------------------------------------------------------------

DIST_CASES = [  # (batch, classes, temperature, beta, gamma, logit scale)
    (2, 2, 1.0, 1.0, 1.0, 1.0),
    (8, 10, 1.0, 1.0, 1.0, 2.0),
    (8, 10, 4.0, 1.0, 1.0, 2.0),
    (5, 100, 4.0, 2.0, 0.5, 3.0),
    (16, 7, 1.0, 0.0, 1.0, 2.0),
    (16, 7, 4.0, 1.0, 0.0, 2.0),
    (64, 100, 4.0, 1.0, 2.0, 4.0),
    (3, 100, 1.0, 0.3, 1.7, 30.0),  # very peaked rows
]


@pytest.mark.parametrize(("b", "c", "temperature", "beta", "gamma", "scale"), DIST_CASES)
def test_dist_matches_float64_reference(b, c, temperature, beta, gamma, scale):
    rng = np.random.default_rng(100 * b + c)
    z_s, z_t = _logits(rng, b, c, scale), _logits(rng, b, c, scale)
    got = losses.dist(_t(z_s), _t(z_t), beta=beta, gamma=gamma, temperature=temperature)
    assert got.dtype == torch.float64 and got.shape == ()
    assert got.item() == pytest.approx(
        ref_dist(z_s, z_t, beta, gamma, temperature), rel=1e-10, abs=1e-10
    )


@pytest.mark.parametrize(("b", "c", "temperature", "beta", "gamma", "scale"), DIST_CASES)
def test_dist_float32_close_to_float64_reference(b, c, temperature, beta, gamma, scale):
    rng = np.random.default_rng(11 + 100 * b + c)
    z_s, z_t = _logits(rng, b, c, scale), _logits(rng, b, c, scale)
    z_s, z_t = z_s.astype(np.float32).astype(np.float64), z_t.astype(np.float32).astype(np.float64)
    got = losses.dist(_t(z_s, torch.float32), _t(z_t, torch.float32), beta, gamma, temperature)
    assert got.dtype == torch.float32
    expected = ref_dist(z_s, z_t, beta, gamma, temperature)
    assert got.item() == pytest.approx(expected, rel=1e-5, abs=1e-5 * temperature**2)


def test_dist_default_arguments_are_beta_gamma_one_and_tau_one():
    rng = np.random.default_rng(5)
    z_s, z_t = _logits(rng, 6, 9, 2.0), _logits(rng, 6, 9, 2.0)
    assert losses.dist(_t(z_s), _t(z_t)).item() == pytest.approx(
        ref_dist(z_s, z_t, 1.0, 1.0, 1.0), rel=1e-10
    )


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_dist_temperature_squared_factor(temperature):
    # dist(τ) = τ² · (β·inter + γ·intra) with inter/intra computed on softmax(z/τ).
    rng = np.random.default_rng(21)
    z_s, z_t = _logits(rng, 8, 10, 3.0), _logits(rng, 8, 10, 3.0)
    beta, gamma = 1.5, 0.5
    inter, intra = ref_dist_parts(z_s, z_t, temperature)
    got = losses.dist(_t(z_s), _t(z_t), beta, gamma, temperature).item()
    assert got == pytest.approx(temperature**2 * (beta * inter + gamma * intra), rel=1e-10)
    # Library-only identity: the τ-run is τ² times the τ=1 run on z/τ (16× for τ = 4).
    unscaled = losses.dist(_t(z_s / temperature), _t(z_t / temperature), beta, gamma, 1.0).item()
    assert got == pytest.approx(temperature**2 * unscaled, rel=1e-12)


def test_dist_is_linear_in_beta_and_gamma():
    rng = np.random.default_rng(8)
    z_s, z_t = _t(_logits(rng, 8, 10, 2.0)), _t(_logits(rng, 8, 10, 2.0))
    inter = losses.dist(z_s, z_t, 1.0, 0.0, 4.0)
    intra = losses.dist(z_s, z_t, 0.0, 1.0, 4.0)
    both = losses.dist(z_s, z_t, 2.0, 3.0, 4.0)
    assert both.item() == pytest.approx(2.0 * inter.item() + 3.0 * intra.item(), rel=1e-12)


# Golden 2×2 cases. With z = [[ln 3, 0], [0, ln 3]], Y = softmax(z) = [[3/4, 1/4], [1/4, 3/4]];
# every row and every column centred is ±(1/4, −1/4), so every ‖u'‖² = 1/16 + 1/16 = 1/8.
_L3 = math.log(3.0)
_DIAG = [[_L3, 0.0], [0.0, _L3]]
_ANTI = [[0.0, _L3], [_L3, 0.0]]


def test_dist_identical_logits_is_zero_up_to_eps():
    # ρ(u, u) = ‖u'‖² / (‖u'‖² + ε) = 0.125 / (0.125 + 1e-8), so 1 − ρ = 1e-8 / 0.12500001
    # = 7.99999936e-8 for each row and each column: inter = intra = 7.99999936e-8 and
    # dist = 2 · 7.99999936e-8 = 1.599999872e-7. (Because ε is added to the product of the norms
    # and a softmax row has ‖u'‖ ≤ 1, identical inputs can never give exactly 0: 1 − ρ ≥ ~1e-8.)
    z = torch.tensor(_DIAG, dtype=torch.float64)
    assert losses.dist(z, z.clone()).item() == pytest.approx(1.5999998720000103e-07, rel=1e-9)
    # Random identical logits: tiny, and exactly what the ε-definition predicts.
    rng = np.random.default_rng(2)
    z_r = _logits(rng, 8, 10, 3.0)
    for temperature, bound in ((1.0, 1e-6), (4.0, 1e-4)):  # flatter Y at τ = 4, and ×16
        got = losses.dist(_t(z_r), _t(z_r.copy()), 1.0, 1.0, temperature).item()
        assert 0.0 < got < bound
        assert got == pytest.approx(ref_dist(z_r, z_r, 1.0, 1.0, temperature), rel=1e-9)


def test_dist_perfectly_anti_correlated():
    # Y_s = [[3/4, 1/4], [1/4, 3/4]], Y_t = [[1/4, 3/4], [3/4, 1/4]]: every row and every column
    # pair is anti-correlated, ρ = −0.125 / (0.125 + 1e-8), so inter = intra = 1 + 0.125/0.12500001
    # = 1.99999992 and dist (β = γ = 1, τ = 1) = 3.99999984.
    z_s = torch.tensor(_DIAG, dtype=torch.float64)
    z_t = torch.tensor(_ANTI, dtype=torch.float64)
    assert losses.dist(z_s, z_t).item() == pytest.approx(3.999999840000013, rel=1e-12)
    assert losses.dist(z_s, z_t, 1.0, 0.0).item() == pytest.approx(1.9999999200000064, rel=1e-12)
    # τ² factor: z scaled by 4 and τ = 4 gives the same Y, so 16 × the τ = 1 value = 63.99999744.
    assert losses.dist(4 * z_s, 4 * z_t, 1.0, 1.0, 4.0).item() == pytest.approx(
        63.99999744000021, rel=1e-12
    )


def test_dist_inter_is_per_sample_and_intra_is_per_class():
    # Both samples have the same prediction (3/4, 1/4) for student and teacher:
    #   rows: ρ ≈ 1 → inter = 1e-8 / 0.12500001 = 7.99999936e-8;
    #   columns are constant over the batch → centred to 0 → ρ = 0 / (0 + ε) = 0 → intra = 1.
    # Swapping the two axes would give inter = 1 and intra ≈ 0 instead.
    z = torch.tensor([[_L3, 0.0], [_L3, 0.0]], dtype=torch.float64)
    assert losses.dist(z, z.clone(), 1.0, 0.0).item() == pytest.approx(
        7.999999360000052e-08, rel=1e-8
    )
    assert losses.dist(z, z.clone(), 0.0, 1.0).item() == pytest.approx(1.0, abs=1e-15)


def test_dist_uniform_student_gives_beta_plus_gamma_times_tau_squared():
    # z_s = 0 → Y_s = 1/4 everywhere (C = 4, exact in binary): every centred row/column is 0,
    # ρ = 0 / ε = 0, inter = intra = 1, dist = τ²(β + γ) = 16 · (2 + 0.5) = 40 exactly.
    z_s = torch.zeros(4, 4, dtype=torch.float64)
    z_t = torch.randn(4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    assert losses.dist(z_s, z_t, 2.0, 0.5, 4.0).item() == 40.0


def test_dist_gradient_only_to_student():
    rng = np.random.default_rng(9)
    z_s = _t(_logits(rng, 8, 10, 2.0)).requires_grad_(True)
    z_t = _t(_logits(rng, 8, 10, 2.0)).requires_grad_(True)
    losses.dist(z_s, z_t, 1.0, 1.0, 4.0).backward()
    assert z_t.grad is None
    assert z_s.grad is not None and torch.isfinite(z_s.grad).all() and z_s.grad.abs().sum() > 0


def test_dist_cosine_relation_matches_hand_computation():
    """Appendix A.3 (Table 10): ρ = cosine similarity of the probability vectors, no centring."""
    rng = np.random.default_rng(11)
    z_s, z_t = _logits(rng, 6, 5, 2.0), _logits(rng, 6, 5, 2.0)

    def softmax(z):
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    def cos(a, b):
        return (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-8)

    y_s, y_t = softmax(z_s), softmax(z_t)
    expected = (1 - cos(y_s, y_t).mean()) + 2 * (1 - cos(y_s.T, y_t.T).mean())
    got = losses.dist(_t(z_s), _t(z_t), 1.0, 2.0, 1.0, relation="cosine")
    assert got.item() == pytest.approx(expected, rel=1e-12)
    assert got.item() != pytest.approx(
        losses.dist(_t(z_s), _t(z_t), 1.0, 2.0, 1.0).item()
    )  # not the centred (Pearson) one


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
