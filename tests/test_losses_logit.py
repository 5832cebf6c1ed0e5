"""Golden values for the logit losses (KD, DIST, DKD, RLD, WSLD, IPWD, MLKD levels).

The references are written from the definitions of the authors' code (KD: RepDistiller
``distiller_zoo/KD.py``; DIST: image_classification_sota ``lib/models/losses/dist_kd.py``; mdistiller
``DKD.py``, WSLD's ``WSLDistiller``, MLKD ``KD_ours.py``, RLD ``RLD.py``) and docs/references.md §DIST,
§MLKD, §RLD, §IPWD in plain numpy float64, one sample at a time with explicit softmax / sums — the
non-target softmax is taken over the remaining classes (not via the code's −1000 / −1e9 fill), the binary
distributions sum the other classes explicitly — so they check the library rather than restate it.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from kdbench import losses

# ---------------------------------------------------------------------------------------------
# Independent numpy float64 references
# ---------------------------------------------------------------------------------------------


def softmax(v: np.ndarray) -> np.ndarray:
    e = np.exp(v - v.max())
    return e / e.sum()


def log_softmax(v: np.ndarray) -> np.ndarray:
    shifted = v - v.max()
    return shifted - np.log(np.exp(shifted).sum())


def kl(p: np.ndarray, log_q: np.ndarray) -> float:
    """Σ p (log p − log q) with 0·log 0 = 0."""
    keep = p > 0
    return float((p[keep] * (np.log(p[keep]) - log_q[keep])).sum())


def binary(p: np.ndarray, k: int) -> np.ndarray:
    """[p_k, Σ_{c≠k} p_c] (the other entry summed, as the released code does)."""
    return np.array([p[k], np.delete(p, k).sum()])


def ref_kd_rows(z_s: np.ndarray, z_t: np.ndarray, temperature: float) -> np.ndarray:
    """Per-sample KL(p_t ‖ p_s) at T (no T² factor)."""
    return np.array(
        [kl(softmax(t / temperature), log_softmax(s / temperature)) for s, t in zip(z_s, z_t)]
    )


def ref_dkd(z_s, z_t, y, alpha, beta, temperature) -> float:
    tckd = nckd = 0.0
    for s, t, k in zip(z_s, z_t, y):
        p_s, p_t = softmax(s / temperature), softmax(t / temperature)
        tckd += kl(binary(p_t, k), np.log(binary(p_s, k)))
        rest_s, rest_t = np.delete(s, k) / temperature, np.delete(t, k) / temperature
        nckd += kl(softmax(rest_t), log_softmax(rest_s))
    b = len(y)
    return temperature**2 * (alpha * tckd + beta * nckd) / b


def ref_standardize(z: np.ndarray) -> np.ndarray:
    """(z − mean) / (1e-7 + std), std with Bessel's correction, per row."""
    mean = z.sum(axis=1, keepdims=True) / z.shape[1]
    std = np.sqrt(((z - mean) ** 2).sum(axis=1, keepdims=True) / (z.shape[1] - 1))
    return (z - mean) / (1e-7 + std)


def ref_rld(z_s, z_t, y, alpha, beta, temperature, alpha_temperature, logit_stand=False) -> float:
    if logit_stand:
        z_s, z_t = ref_standardize(z_s), ref_standardize(z_t)
    scd = mcd = 0.0
    for s, t, label in zip(z_s, z_t, y):
        top = int(np.argmax(t))
        b_t = binary(softmax(t / alpha_temperature), top)
        b_s = binary(softmax(s / alpha_temperature), label)
        scd += kl(b_t, np.log(b_s))
        keep = t < t[label]  # classes the teacher ranks strictly below the label
        if keep.any():
            mcd += kl(softmax(t[keep] / temperature), log_softmax(s[keep] / temperature))
    b = len(y)
    return (alpha * alpha_temperature**2 * scd + beta * temperature**2 * mcd) / b


def ref_hard_ce(z: np.ndarray, y: np.ndarray) -> np.ndarray:
    return np.array([-log_softmax(row)[label] for row, label in zip(z, y)])


def ref_wsld(z_s, z_t, y, temperature) -> float:
    soft = np.array(
        [-(softmax(t / temperature) * log_softmax(s / temperature)).sum() for s, t in zip(z_s, z_t)]
    )
    ratio = ref_hard_ce(z_s, y) / (ref_hard_ce(z_t, y) + 1e-7)
    weight = 1.0 - np.exp(-np.maximum(ratio, 0.0))
    return temperature**2 * (weight * soft).sum() / len(y)


def ref_ipwd_weights(
    z_kd, z_cls, y, form, logit_norm, self_normalize, max_weight=None
) -> np.ndarray:
    if logit_norm == "zscore":
        z_kd, z_cls = ref_standardize(z_kd), ref_standardize(z_cls)
    elif logit_norm == "l2":
        z_kd = z_kd / np.sqrt((z_kd**2).sum(axis=1, keepdims=True))
        z_cls = z_cls / np.sqrt((z_cls**2).sum(axis=1, keepdims=True))
    h_kd, h_cls = ref_hard_ce(z_kd, y), ref_hard_ce(z_cls, y)
    if form == "mirror":
        w = 1.0 + h_kd / (h_cls + 1e-7)
    elif form == "summary":
        w = 1.0 + h_cls / (h_kd + 1e-7)
    else:  # p^cls_y / p^kd_y
        w = 1.0 + np.exp(-h_cls) / np.exp(-h_kd)
    if self_normalize:
        w = w / (w.sum() / len(w))
    if max_weight is not None:
        w = np.minimum(w, max_weight)
    return w


def ref_ipwd(z_s, z_t, z_cls, y, temperature, form, logit_norm, self_normalize) -> float:
    w = ref_ipwd_weights(z_s, z_cls, y, form, logit_norm, self_normalize)
    return temperature**2 * (w * ref_kd_rows(z_s, z_t, temperature)).sum() / len(y)


def ref_probs(z: np.ndarray, temperature: float) -> np.ndarray:
    return np.stack([softmax(row / temperature) for row in z])


def ref_mlkd_instance(z_s, z_t, temperature) -> float:
    return temperature**2 * ref_kd_rows(z_s, z_t, temperature).sum() / len(z_s)


def ref_mlkd_batch(z_s, z_t, temperature) -> float:
    """‖G_t − G_s‖²_F / B, G_ij = Σ_c P_ic P_jc."""
    p_s, p_t = ref_probs(z_s, temperature), ref_probs(z_t, temperature)
    b = len(z_s)
    total = 0.0
    for i in range(b):
        for j in range(b):
            total += ((p_t[i] * p_t[j]).sum() - (p_s[i] * p_s[j]).sum()) ** 2
    return total / b


def ref_mlkd_class(z_s, z_t, temperature) -> float:
    """‖M_t − M_s‖²_F / C, M_cd = Σ_i P_ic P_id."""
    p_s, p_t = ref_probs(z_s, temperature), ref_probs(z_t, temperature)
    c = z_s.shape[1]
    total = 0.0
    for a in range(c):
        for d in range(c):
            total += ((p_t[:, a] * p_t[:, d]).sum() - (p_s[:, a] * p_s[:, d]).sum()) ** 2
    return total / c


def _t(a: np.ndarray, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return torch.tensor(a, dtype=dtype)


def _case(seed: int, b: int, c: int, scale: float, teacher_right: float = 0.5):
    """Random logits and labels; a fraction of labels is set to the teacher's top-1 class."""
    rng = np.random.default_rng(seed)
    z_s, z_t = rng.standard_normal((b, c)) * scale, rng.standard_normal((b, c)) * scale
    y = rng.integers(0, c, size=b)
    right = rng.random(b) < teacher_right
    y[right] = z_t[right].argmax(axis=1)
    return z_s, z_t, y


def _f32(*arrays: np.ndarray) -> list[np.ndarray]:
    """Round inputs to float32 first, so only the computation's precision is measured."""
    return [a.astype(np.float32).astype(np.float64) for a in arrays]


CASES = [  # (batch, classes, logit scale)
    (1, 2, 1.0),
    (3, 3, 2.0),
    (8, 10, 2.0),
    (16, 100, 4.0),
    (5, 7, 1.0),
    (4, 100, 10.0),  # peaked rows
]


EPS = 1e-8  # DIST: added to the product of the two norms (methods-seed.md §4.1)


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
# DKD
# ---------------------------------------------------------------------------------------------

DKD_PARAMS = [(1.0, 8.0, 4.0), (1.0, 2.0, 1.0), (0.5, 6.0, 2.0)]  # (α, β, T)


@pytest.mark.parametrize(("alpha", "beta", "temperature"), DKD_PARAMS)
@pytest.mark.parametrize(("b", "c", "scale"), CASES)
def test_dkd_matches_float64_reference(b, c, scale, alpha, beta, temperature):
    z_s, z_t, y = _case(10 * b + c, b, c, scale)
    got = losses.dkd(_t(z_s), _t(z_t), torch.tensor(y), alpha, beta, temperature)
    assert got.dtype == torch.float64 and got.shape == ()
    assert got.item() == pytest.approx(
        ref_dkd(z_s, z_t, y, alpha, beta, temperature), rel=1e-10, abs=1e-10
    )


@pytest.mark.parametrize(("alpha", "beta", "temperature"), DKD_PARAMS)
@pytest.mark.parametrize(("b", "c", "scale"), CASES)
def test_dkd_float32_close_to_float64_reference(b, c, scale, alpha, beta, temperature):
    z_s, z_t, y = _case(7 + 10 * b + c, b, c, scale)
    z_s, z_t = _f32(z_s, z_t)
    got = losses.dkd(
        _t(z_s, torch.float32), _t(z_t, torch.float32), torch.tensor(y), alpha, beta, temperature
    )
    assert got.dtype == torch.float32
    expected = ref_dkd(z_s, z_t, y, alpha, beta, temperature)
    assert got.item() == pytest.approx(expected, rel=5e-5, abs=1e-5 * temperature**2)


def test_dkd_by_hand():
    # C = 3, y = 0, T = 1. z_s = 0 → p_s = (1/3, 1/3, 1/3); z_t = (0, ln 3, 0) → p_t = (1/5, 3/5, 1/5).
    # TCKD: b_t = (1/5, 4/5), b_s = (1/3, 2/3): 1/5·ln(3/5) + 4/5·ln(6/5) = 0.0436921206819655.
    # NCKD over classes {1, 2}: q_t = (3/4, 1/4), q_s = (1/2, 1/2): 3/4·ln 3 − ln 2 = 0.130812035941137.
    z_s = torch.zeros(1, 3, dtype=torch.float64)
    z_t = torch.tensor([[0.0, math.log(3.0), 0.0]], dtype=torch.float64)
    y = torch.tensor([0])
    assert losses.dkd(z_s, z_t, y, 1.0, 0.0, 1.0).item() == pytest.approx(
        0.04369212068196553, rel=1e-12
    )
    assert losses.dkd(z_s, z_t, y, 0.0, 1.0, 1.0).item() == pytest.approx(
        0.130812035941137, rel=1e-12
    )
    # α = 1, β = 8: 0.0436921206819655 + 8 · 0.130812035941137 = 1.0901884082110616.
    assert losses.dkd(z_s, z_t, y, 1.0, 8.0, 1.0).item() == pytest.approx(
        1.0901884082110616, rel=1e-12
    )
    # T = 2 with doubled teacher logits gives the same distributions, times T² = 4: 4.360753632844246.
    assert losses.dkd(z_s, 2 * z_t, y, 1.0, 8.0, 2.0).item() == pytest.approx(
        4.360753632844246, rel=1e-12
    )
    # Batch mean: a second, identical-logits sample (both parts 0) halves the value.
    z_s2 = torch.cat([z_s, torch.ones(1, 3, dtype=torch.float64)])
    z_t2 = torch.cat([z_t, torch.ones(1, 3, dtype=torch.float64)])
    got = losses.dkd(z_s2, z_t2, torch.tensor([0, 2]), 1.0, 8.0, 1.0).item()
    assert got == pytest.approx(1.0901884082110616 / 2, rel=1e-12)


def test_dkd_identical_logits_is_zero():
    z, _, y = _case(3, 6, 10, 3.0)
    assert losses.dkd(_t(z), _t(z), torch.tensor(y), 1.0, 8.0, 4.0).item() == pytest.approx(
        0.0, abs=1e-14
    )


def test_dkd_log_zero_is_replicated():
    # The released code takes log of the student's binary probabilities: when p_s,y underflows to 0
    # (float32, target logit 200 below the others at T = 1) the TCKD term is +inf, as in mdistiller.
    z_s = torch.tensor([[-200.0, 0.0, 0.0]])
    z_t = torch.tensor([[1.0, 0.0, 0.0]])
    assert math.isinf(losses.dkd(z_s, z_t, torch.tensor([0]), 1.0, 8.0, 1.0).item())


# ---------------------------------------------------------------------------------------------
# RLD
# ---------------------------------------------------------------------------------------------

RLD_PARAMS = [
    (1.0, 8.0, 4.0, 4.0),
    (1.0, 8.0, 4.0, 1.0),
    (1.0, 2.0, 2.0, 3.0),
    (0.5, 16.0, 1.0, 1.0),
]  # (α, β, τ, τ_a)


@pytest.mark.parametrize(("alpha", "beta", "temperature", "alpha_t"), RLD_PARAMS)
@pytest.mark.parametrize(("b", "c", "scale"), CASES)
def test_rld_matches_float64_reference(b, c, scale, alpha, beta, temperature, alpha_t):
    z_s, z_t, y = _case(20 * b + c, b, c, scale)
    got = losses.rld(_t(z_s), _t(z_t), torch.tensor(y), alpha, beta, temperature, alpha_t)
    assert got.dtype == torch.float64 and got.shape == ()
    assert got.item() == pytest.approx(
        ref_rld(z_s, z_t, y, alpha, beta, temperature, alpha_t), rel=1e-10, abs=1e-10
    )
    # Log-space ("safe") mode equals the released computation where the latter is finite.
    safe = losses.rld(
        _t(z_s), _t(z_t), torch.tensor(y), alpha, beta, temperature, alpha_t, safe=True
    )
    assert safe.item() == pytest.approx(got.item(), rel=1e-10, abs=1e-10)


@pytest.mark.parametrize(("alpha", "beta", "temperature", "alpha_t"), RLD_PARAMS)
@pytest.mark.parametrize(("b", "c", "scale"), CASES)
def test_rld_float32_close_to_float64_reference(b, c, scale, alpha, beta, temperature, alpha_t):
    z_s, z_t, y = _case(5 + 20 * b + c, b, c, scale)
    z_s, z_t = _f32(z_s, z_t)
    got = losses.rld(
        _t(z_s, torch.float32),
        _t(z_t, torch.float32),
        torch.tensor(y),
        alpha,
        beta,
        temperature,
        alpha_t,
    )
    assert got.dtype == torch.float32
    expected = ref_rld(z_s, z_t, y, alpha, beta, temperature, alpha_t)
    assert got.item() == pytest.approx(
        expected, rel=5e-5, abs=1e-5 * max(temperature, alpha_t) ** 2
    )


@pytest.mark.parametrize(("b", "c", "scale"), [(8, 10, 2.0), (16, 100, 4.0)])
def test_rld_logit_stand_matches_reference(b, c, scale):
    z_s, z_t, y = _case(31 + b, b, c, scale)
    got = losses.rld(_t(z_s), _t(z_t), torch.tensor(y), 1.0, 8.0, 2.0, 2.0, logit_stand=True)
    assert got.item() == pytest.approx(
        ref_rld(z_s, z_t, y, 1.0, 8.0, 2.0, 2.0, logit_stand=True), rel=1e-10, abs=1e-10
    )


def test_rld_by_hand_wrong_teacher():
    # C = 4, y = 0, τ = τ_a = 1. z_t = (ln 2, ln 3, 0, −ln 2) → p_t ∝ (2, 3, 1, 1/2), sum 13/2; the
    # teacher's top-1 is class 1 ≠ y. z_s = (0, 0, 0, ln 2) → p_s = (1, 1, 1, 2)/5.
    # SCD: b_t = (p_t,1, rest) = (6/13, 7/13); b_s = (p_s,0, rest) = (1/5, 4/5):
    #   6/13·ln(30/13) + 7/13·ln(35/52) = 0.17278604196612435.
    # MCD: classes with z_t ≥ z_t,0 = ln 2 are masked: {0, 1}. Over {2, 3}: q_t = (2/3, 1/3),
    #   q_s = (1/3, 2/3): 2/3·ln 2 + 1/3·ln(1/2) = ln 2 / 3 = 0.23104906018664842.
    z_s = torch.tensor([[0.0, 0.0, 0.0, math.log(2.0)]], dtype=torch.float64)
    z_t = torch.tensor([[math.log(2.0), math.log(3.0), 0.0, -math.log(2.0)]], dtype=torch.float64)
    y = torch.tensor([0])
    assert losses.rld(z_s, z_t, y, 1.0, 0.0, 1.0, 1.0).item() == pytest.approx(
        0.17278604196612435, rel=1e-12
    )
    assert losses.rld(z_s, z_t, y, 0.0, 1.0, 1.0, 1.0).item() == pytest.approx(
        0.23104906018664842, rel=1e-12
    )
    # α = 1, β = 8: 0.17278604196612435 + 8 · 0.23104906018664842 = 2.021178523459312.
    assert losses.rld(z_s, z_t, y, 1.0, 8.0, 1.0, 1.0).item() == pytest.approx(
        2.021178523459312, rel=1e-12
    )
    # τ² and τ_a² scale their own parts: doubling all logits with τ = τ_a = 2 gives 4× the value.
    assert losses.rld(2 * z_s, 2 * z_t, y, 1.0, 8.0, 2.0, 2.0).item() == pytest.approx(
        4 * 2.021178523459312, rel=1e-12
    )


def test_rld_by_hand_label_ranked_lowest_masks_everything():
    # z_t = (0, 1, 2), y = 0: every class has z_t ≥ z_t,0, so MCD is 0 (two uniform rows).
    # SCD: teacher top-1 = 2, p_t,2 = e²/(1 + e + e²) = 0.6652409557748219; z_s = 0 → b_s = (1/3, 2/3):
    #   p·ln(3p) + (1 − p)·ln(3(1 − p)/2) = 0.22907717543289377.
    z_s = torch.zeros(1, 3, dtype=torch.float64)
    z_t = torch.tensor([[0.0, 1.0, 2.0]], dtype=torch.float64)
    y = torch.tensor([0])
    assert losses.rld(z_s, z_t, y, 0.0, 1.0, 1.0, 1.0).item() == 0.0
    assert losses.rld(z_s, z_t, y, 1.0, 8.0, 1.0, 1.0).item() == pytest.approx(
        0.22907717543289377, rel=1e-12
    )
    # Also 0 in float32 with the −1e9 fill (log-softmax subtracts the row max first).
    assert losses.rld(z_s.float(), z_t.float(), y, 0.0, 1.0, 4.0, 4.0).item() == 0.0


def test_rld_mask_includes_ties():
    # z_t = (1, 1, 0, −1), y = 0: class 1 ties the label's logit and is masked (≥), so MCD runs
    # over {2, 3} only; with "strictly greater" it would include class 1.
    z_t = torch.tensor([[1.0, 1.0, 0.0, -1.0]], dtype=torch.float64)
    z_s = torch.tensor([[0.3, -0.7, 0.2, 0.9]], dtype=torch.float64)
    y = torch.tensor([0])
    q_t, log_q_s = softmax(np.array([0.0, -1.0])), log_softmax(np.array([0.2, 0.9]))
    assert losses.rld(z_s, z_t, y, 0.0, 1.0, 1.0, 1.0).item() == pytest.approx(
        kl(q_t, log_q_s), rel=1e-12
    )


def test_rld_equals_dkd_when_the_teacher_is_right():
    # docs/references.md §RLD: with k = y and no ties, SCD = TCKD and MCD = NCKD (same temperature).
    z_s, z_t, _ = _case(42, 16, 100, 3.0)
    y = torch.tensor(z_t.argmax(axis=1))
    for temperature in (1.0, 4.0):
        rld = losses.rld(_t(z_s), _t(z_t), y, 1.0, 8.0, temperature, temperature)
        dkd = losses.dkd(_t(z_s), _t(z_t), y, 1.0, 8.0, temperature)
        assert rld.item() == pytest.approx(dkd.item(), rel=1e-12)


def test_rld_log_zero_replicated_and_safe_mode_finite():
    # p_s,y underflows to 0 in float32: the released computation gives +inf; safe mode is finite and
    # equals the float64 reference.
    z_s = np.array([[-200.0, 0.0, 0.0, 1.0]])
    z_t = np.array([[1.0, 0.0, 0.5, -1.0]])
    y = torch.tensor([0])
    raw = losses.rld(_t(z_s, torch.float32), _t(z_t, torch.float32), y, 1.0, 8.0, 1.0, 1.0)
    assert math.isinf(raw.item())
    safe = losses.rld(
        _t(z_s, torch.float32), _t(z_t, torch.float32), y, 1.0, 8.0, 1.0, 1.0, safe=True
    )
    assert math.isfinite(safe.item())
    assert safe.item() == pytest.approx(
        ref_rld(z_s, z_t, np.array([0]), 1.0, 8.0, 1.0, 1.0), rel=1e-5
    )


# ---------------------------------------------------------------------------------------------
# WSLD
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("temperature", [1.0, 2.0, 4.0])
@pytest.mark.parametrize(("b", "c", "scale"), CASES)
def test_wsld_matches_float64_reference(b, c, scale, temperature):
    z_s, z_t, y = _case(30 * b + c, b, c, scale)
    got = losses.wsld(_t(z_s), _t(z_t), torch.tensor(y), temperature)
    assert got.dtype == torch.float64 and got.shape == ()
    assert got.item() == pytest.approx(ref_wsld(z_s, z_t, y, temperature), rel=1e-10, abs=1e-10)


@pytest.mark.parametrize("temperature", [1.0, 2.0, 4.0])
@pytest.mark.parametrize(("b", "c", "scale"), CASES)
def test_wsld_float32_close_to_float64_reference(b, c, scale, temperature):
    z_s, z_t, y = _case(3 + 30 * b + c, b, c, scale)
    z_s, z_t = _f32(z_s, z_t)
    got = losses.wsld(_t(z_s, torch.float32), _t(z_t, torch.float32), torch.tensor(y), temperature)
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(
        ref_wsld(z_s, z_t, y, temperature), rel=1e-5, abs=1e-5 * temperature**2
    )


def test_wsld_by_hand():
    # C = 2, y = 0, T = 1: z_s = (0, 0), z_t = (ln 3, 0) → p_t = (3/4, 1/4).
    # Soft CE s = −Σ p_t log p_s = ln 2 (a cross-entropy: it keeps the teacher's entropy).
    # Weight: CE_s = ln 2, CE_t = ln(4/3): w = 1 − exp(−ln 2 / (ln(4/3) + 1e-7)) = 0.9101325976379684.
    # Loss = w · ln 2 = 0.630855843988457.
    z_s = torch.zeros(1, 2, dtype=torch.float64)
    y = torch.tensor([0])
    z_t = torch.tensor([[math.log(3.0), 0.0]], dtype=torch.float64)
    assert losses.wsld(z_s, z_t, y, 1.0).item() == pytest.approx(0.630855843988457, rel=1e-12)
    # T = 2 with z_t = (2 ln 3, 0): the soft term is again ln 2 (p_t at T = 2 is (3/4, 1/4)), but
    # the weight uses T = 1: CE_t = −ln(9/10), w = 1 − exp(−ln 2 / (ln(10/9) + 1e-7)) =
    # 0.9986104943392865; loss = T² · w · ln 2 = 2.7687361945153985.
    assert losses.wsld(z_s, 2 * z_t, y, 2.0).item() == pytest.approx(2.7687361945153985, rel=1e-12)


def test_wsld_weight_and_teacher_get_no_gradient():
    # The weight is computed on detached logits: d/dz_s = T/B · w_i · (p_s − p_t) at T.
    z_s_np, z_t_np, y = _case(77, 5, 10, 2.0)
    temperature = 2.0
    z_s, z_t = _t(z_s_np).requires_grad_(True), _t(z_t_np).requires_grad_(True)
    losses.wsld(z_s, z_t, torch.tensor(y), temperature).backward()
    assert z_t.grad is None
    w = 1.0 - np.exp(-np.maximum(ref_hard_ce(z_s_np, y) / (ref_hard_ce(z_t_np, y) + 1e-7), 0.0))
    expected = (
        temperature
        / 5
        * w[:, None]
        * (ref_probs(z_s_np, temperature) - ref_probs(z_t_np, temperature))
    )
    np.testing.assert_allclose(z_s.grad.numpy(), expected, rtol=1e-10, atol=1e-14)


# ---------------------------------------------------------------------------------------------
# IPWD (reconstructed)
# ---------------------------------------------------------------------------------------------

IPWD_OPTIONS = [  # (form, logit_norm, self_normalize)
    ("mirror", "zscore", True),  # the default
    ("mirror", "none", False),
    ("summary", "none", False),
    ("summary", "zscore", True),
    ("prob-ratio", "none", False),
    ("prob-ratio", "l2", True),
    ("mirror", "l2", False),
]


@pytest.mark.parametrize(("form", "norm", "self_norm"), IPWD_OPTIONS)
@pytest.mark.parametrize(("b", "c", "scale"), CASES)
def test_ipwd_matches_float64_reference(b, c, scale, form, norm, self_norm):
    z_s, z_t, y = _case(40 * b + c, b, c, scale)
    z_cls = np.random.default_rng(b).standard_normal((b, c)) * scale
    got = losses.ipwd(
        _t(z_s),
        _t(z_t),
        _t(z_cls),
        torch.tensor(y),
        4.0,
        form=form,
        logit_norm=norm,
        self_normalize=self_norm,
    )
    assert got.dtype == torch.float64 and got.shape == ()
    expected = ref_ipwd(z_s, z_t, z_cls, y, 4.0, form, norm, self_norm)
    assert got.item() == pytest.approx(expected, rel=1e-10, abs=1e-10)
    weights = losses.ipwd_weights(_t(z_s), _t(z_cls), torch.tensor(y), form, norm, self_norm)
    np.testing.assert_allclose(
        weights.numpy(), ref_ipwd_weights(z_s, z_cls, y, form, norm, self_norm), rtol=1e-10
    )


@pytest.mark.parametrize(("form", "norm", "self_norm"), IPWD_OPTIONS)
@pytest.mark.parametrize(("b", "c", "scale"), [(8, 10, 2.0), (16, 100, 4.0), (5, 7, 1.0)])
def test_ipwd_float32_close_to_float64_reference(b, c, scale, form, norm, self_norm):
    z_s, z_t, y = _case(9 + 40 * b + c, b, c, scale)
    z_cls = np.random.default_rng(b + 1).standard_normal((b, c)) * scale
    z_s, z_t, z_cls = _f32(z_s, z_t, z_cls)
    got = losses.ipwd(
        _t(z_s, torch.float32),
        _t(z_t, torch.float32),
        _t(z_cls, torch.float32),
        torch.tensor(y),
        4.0,
        form=form,
        logit_norm=norm,
        self_normalize=self_norm,
    )
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(
        ref_ipwd(z_s, z_t, z_cls, y, 4.0, form, norm, self_norm), rel=5e-5, abs=1e-6
    )


def test_ipwd_weights_by_hand():
    # C = 2, y = 0. z_kd = (0, 0) → H_kd = ln 2; z_cls = (ln 3, 0) → p^cls_y = 3/4, H_cls = ln(4/3).
    z_kd = torch.zeros(1, 2, dtype=torch.float64)
    z_cls = torch.tensor([[math.log(3.0), 0.0]], dtype=torch.float64)
    y = torch.tensor([0])

    def w(form, norm="none", self_norm=False, **kw):
        return losses.ipwd_weights(z_kd, z_cls, y, form, norm, self_norm, **kw).item()

    # mirror: 1 + ln 2 / (ln(4/3) + 1e-7) = 3.4094200021244814 (> 2: the KD head fits worse → up-weighted)
    assert w("mirror") == pytest.approx(3.4094200021244814, rel=1e-12)
    # summary: 1 + ln(4/3) / (ln 2 + 1e-7) = 1.415037439401598
    assert w("summary") == pytest.approx(1.415037439401598, rel=1e-12)
    # prob-ratio: 1 + (3/4) / (1/2) = 2.5
    assert w("prob-ratio") == pytest.approx(2.5, rel=1e-12)
    # z-scored logits: (0, 0) stays (0, 0); (ln 3, 0) → ±(ln 3 / 2) / (ln 3/√2 + 1e-7) ≈ ±1/√2, so
    # H_cls = ln(1 + e^{−2u}) with u = (ln 3 / 2) / (ln 3/√2 + 1e-7); mirror w = 1 + ln 2 / (H_cls + 1e-7).
    u = (math.log(3.0) / 2) / (math.log(3.0) / math.sqrt(2.0) + 1e-7)
    h_cls = math.log1p(math.exp(-2 * u))  # ≈ ln(1 + e^{−√2}) = 0.2176217
    assert w("mirror", "zscore") == pytest.approx(1 + math.log(2.0) / (h_cls + 1e-7), rel=1e-12)
    # A single sample self-normalises to exactly 1; clipping caps the weight.
    assert w("mirror", "none", True) == pytest.approx(1.0, rel=1e-15)
    assert w("mirror", max_weight=3.0) == 3.0


def test_ipwd_loss_by_hand_and_kd_special_case():
    # Same heads; teacher z_t = (ln 3, 0), T = 1: KL((3/4, 1/4) ‖ (1/2, 1/2)) = 3/4 ln 3 − ln 2.
    # Raw mirror weight 3.4094200021244814 → loss 3.4094200021244814 · 0.130812035941137 = 0.445993171856339.
    z_s = torch.zeros(1, 2, dtype=torch.float64)
    z_t = torch.tensor([[math.log(3.0), 0.0]], dtype=torch.float64)
    y = torch.tensor([0])
    got = losses.ipwd(
        z_s, z_t, z_t.clone(), y, 1.0, form="mirror", logit_norm="none", self_normalize=False
    )
    assert got.item() == pytest.approx(0.445993171856339, rel=1e-12)
    # Self-normalised equal per-sample weights reduce to plain KD.
    z_s2, z_t2, y2 = _case(5, 6, 10, 2.0)
    # logits_cls = logits_kd → prob-ratio ŵ = 1 + 1 = 2 for every sample → 1 after self-normalisation.
    same = losses.ipwd(_t(z_s2), _t(z_t2), _t(z_s2), torch.tensor(y2), 4.0, form="prob-ratio")
    assert same.item() == pytest.approx(losses.kd(_t(z_s2), _t(z_t2), 4.0).item(), rel=1e-12)


def test_ipwd_weight_direction():
    # mirror up-weights the sample whose KD-head CE is high relative to the CE-only head; summary
    # does the opposite.
    z_cls = torch.tensor([[2.0, 0.0, 0.0], [2.0, 0.0, 0.0]], dtype=torch.float64)
    z_kd = torch.tensor(
        [[2.0, 0.0, 0.0], [0.0, 2.0, 0.0]], dtype=torch.float64
    )  # sample 1: KD head wrong
    y = torch.tensor([0, 0])
    mirror = losses.ipwd_weights(z_kd, z_cls, y, "mirror", "none", False)
    summary = losses.ipwd_weights(z_kd, z_cls, y, "summary", "none", False)
    assert mirror[1] > mirror[0] and summary[1] < summary[0]


def test_ipwd_rejects_unknown_options():
    z = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="weight form"):
        losses.ipwd_weights(z, z, torch.tensor([0, 1]), "inverse")
    with pytest.raises(ValueError, match="normalisation"):
        losses.ipwd_weights(z, z, torch.tensor([0, 1]), "mirror", "softmax")


def test_ipwd_gradient_only_through_the_kl():
    # Weights are detached: d/dz_s = T/B · w_i (p_s − p_t); nothing reaches the teacher or the
    # extra head's logits through this term.
    z_s_np, z_t_np, y = _case(13, 5, 10, 2.0)
    z_cls_np = np.random.default_rng(0).standard_normal((5, 10)) * 2
    temperature = 4.0
    z_s, z_t, z_cls = (_t(a).requires_grad_(True) for a in (z_s_np, z_t_np, z_cls_np))
    losses.ipwd(z_s, z_t, z_cls, torch.tensor(y), temperature).backward()
    assert z_t.grad is None and z_cls.grad is None
    w = ref_ipwd_weights(z_s_np, z_cls_np, y, "mirror", "zscore", True)
    expected = (
        temperature
        / 5
        * w[:, None]
        * (ref_probs(z_s_np, temperature) - ref_probs(z_t_np, temperature))
    )
    np.testing.assert_allclose(z_s.grad.numpy(), expected, rtol=1e-10, atol=1e-14)


# ---------------------------------------------------------------------------------------------
# MLKD levels
# ---------------------------------------------------------------------------------------------

MLKD_LEVELS = {
    "instance": (losses.mlkd_instance, ref_mlkd_instance),
    "batch": (losses.mlkd_batch, ref_mlkd_batch),
    "class": (losses.mlkd_class, ref_mlkd_class),
}
MLKD_CASES = [(1, 2, 1.0), (3, 3, 2.0), (8, 10, 2.0), (12, 30, 4.0), (5, 7, 1.0), (4, 20, 10.0)]


@pytest.mark.parametrize("temperature", [1.0, 2.0, 4.0, 6.0])
@pytest.mark.parametrize(("b", "c", "scale"), MLKD_CASES)
@pytest.mark.parametrize("level", list(MLKD_LEVELS))
def test_mlkd_levels_match_float64_reference(level, b, c, scale, temperature):
    fn, ref = MLKD_LEVELS[level]
    z_s, z_t, _ = _case(50 * b + c, b, c, scale)
    got = fn(_t(z_s), _t(z_t), temperature)
    assert got.dtype == torch.float64 and got.shape == ()
    assert got.item() == pytest.approx(ref(z_s, z_t, temperature), rel=1e-10, abs=1e-12)


@pytest.mark.parametrize("temperature", [1.0, 4.0])
@pytest.mark.parametrize(("b", "c", "scale"), MLKD_CASES)
@pytest.mark.parametrize("level", list(MLKD_LEVELS))
def test_mlkd_levels_float32_close_to_float64_reference(level, b, c, scale, temperature):
    fn, ref = MLKD_LEVELS[level]
    z_s, z_t, _ = _case(1 + 50 * b + c, b, c, scale)
    z_s, z_t = _f32(z_s, z_t)
    got = fn(_t(z_s, torch.float32), _t(z_t, torch.float32), temperature)
    assert got.dtype == torch.float32
    # Gram entries are O(1) and float32-rounded (~1e-7 each) before the difference is squared.
    assert got.item() == pytest.approx(
        ref(z_s, z_t, temperature), rel=5e-5, abs=1e-6 * temperature**2
    )


def test_mlkd_levels_by_hand():
    # B = 2, C = 2, T = 1: z_t = [[ln 3, 0], [0, ln 3]] → P_t = [[3/4, 1/4], [1/4, 3/4]]; z_s = 0 → P_s = 1/2.
    # G_t = P_t P_tᵀ = [[5/8, 3/8], [3/8, 5/8]], G_s = 1/2 everywhere: ‖·‖² = 4 · (1/8)² = 1/16, /B → 1/32.
    # M_t = P_tᵀ P_t is the same matrix here: class level 1/16 / C = 1/32.
    # Instance: both rows KL((3/4, 1/4) ‖ (1/2, 1/2)) = 3/4 ln 3 − ln 2 = 0.130812035941137.
    l3 = math.log(3.0)
    z_t = torch.tensor([[l3, 0.0], [0.0, l3]], dtype=torch.float64)
    z_s = torch.zeros(2, 2, dtype=torch.float64)
    assert losses.mlkd_batch(z_s, z_t, 1.0).item() == pytest.approx(1 / 32, rel=1e-12)
    assert losses.mlkd_class(z_s, z_t, 1.0).item() == pytest.approx(1 / 32, rel=1e-12)
    assert losses.mlkd_instance(z_s, z_t, 1.0).item() == pytest.approx(0.130812035941137, rel=1e-12)
    # B = 1 separates the two Gram matrices. P_t = (3/4, 1/4), P_s = (1/2, 1/2):
    # batch: G is 1×1, (5/8 − 1/2)² / 1 = 1/64;
    # class: M_t = [[9/16, 3/16], [3/16, 1/16]], M_s = 1/4: (5/16)² + 2(1/16)² + (3/16)² = 36/256, /C = 9/128.
    # No T² factor on either: T = 2 with doubled logits gives the same values (instance gets ×4).
    for scale, temperature in ((1.0, 1.0), (2.0, 2.0)):
        z_t1, z_s1 = scale * z_t[:1], z_s[:1]
        assert losses.mlkd_batch(z_s1, z_t1, temperature).item() == pytest.approx(1 / 64, rel=1e-12)
        assert losses.mlkd_class(z_s1, z_t1, temperature).item() == pytest.approx(
            9 / 128, rel=1e-12
        )
        assert losses.mlkd_instance(z_s1, z_t1, temperature).item() == pytest.approx(
            temperature**2 * 0.130812035941137, rel=1e-12
        )


def test_mlkd_instance_equals_kd():
    z_s, z_t, _ = _case(8, 8, 10, 3.0)
    for temperature in (2.0, 4.0):
        assert losses.mlkd_instance(_t(z_s), _t(z_t), temperature).item() == pytest.approx(
            losses.kd(_t(z_s), _t(z_t), temperature).item(), rel=1e-12
        )


# ---------------------------------------------------------------------------------------------
# Gradients: only the student's logits receive any; analytic = numerical
# ---------------------------------------------------------------------------------------------

GRAD_LOSSES = {
    "dkd": lambda s, t, y: losses.dkd(s, t, y, 1.0, 8.0, 4.0),
    "rld": lambda s, t, y: losses.rld(s, t, y, 1.0, 8.0, 4.0, 2.0),
    "rld_safe": lambda s, t, y: losses.rld(s, t, y, 1.0, 8.0, 4.0, 2.0, safe=True),
    "rld_stand": lambda s, t, y: losses.rld(s, t, y, 1.0, 8.0, 2.0, 2.0, logit_stand=True),
    "wsld": lambda s, t, y: losses.wsld(s, t, y, 2.0),
    "ipwd": lambda s, t, y: losses.ipwd(s, t, s.detach().flip(0), y, 4.0),
    "mlkd_instance": lambda s, t, y: losses.mlkd_instance(s, t, 3.0),
    "mlkd_batch": lambda s, t, y: losses.mlkd_batch(s, t, 3.0),
    "mlkd_class": lambda s, t, y: losses.mlkd_class(s, t, 3.0),
}


DETACHED_WEIGHTS = {
    "wsld",
    "ipwd",
}  # finite differences would see the weights move; autograd must not


@pytest.mark.parametrize("name", list(GRAD_LOSSES))
def test_gradients_reach_only_the_student(name):
    fn = GRAD_LOSSES[name]
    z_s_np, z_t_np, y_np = _case(99, 6, 8, 2.0)
    z_s, z_t, y = (
        _t(z_s_np).requires_grad_(True),
        _t(z_t_np).requires_grad_(True),
        torch.tensor(y_np),
    )
    fn(z_s, z_t, y).backward()
    assert z_t.grad is None
    assert z_s.grad is not None and torch.isfinite(z_s.grad).all() and z_s.grad.abs().sum() > 0
    if name in DETACHED_WEIGHTS:
        return  # stop-gradient weights of the student's own logits: checked in closed form above
    # Autograd equals central finite differences (the masks are locally constant).
    assert torch.autograd.gradcheck(
        lambda s: fn(s, _t(z_t_np), y), (_t(z_s_np).requires_grad_(True),)
    )
