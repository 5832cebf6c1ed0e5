"""CRD, SRRL and SemCKD: golden values of the pure losses.

The references are written from RepDistiller ``crd/criterion.py`` and SimKD ``models/util.py`` / ``distiller_zoo/SemCKD.py`` in plain numpy
float64 (explicit exp/log/means, max-subtracted softmax, no torch.nn.functional).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from kdbench import losses

CRD_EPS = 1e-7
NUM_CLASSES = 10


def _t(a: np.ndarray, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return torch.tensor(a, dtype=dtype)


def _unit_rows(rng: np.random.Generator, *shape: int) -> np.ndarray:
    x = rng.standard_normal(shape)
    return x / np.sqrt((x * x).sum(axis=-1, keepdims=True))


# ---------------------------------------------------------------------------------------------
# Independent numpy float64 references
# ---------------------------------------------------------------------------------------------


def ref_crd_scores(
    anchor: np.ndarray, bank: np.ndarray, contrast: np.ndarray, temperature: float
) -> np.ndarray:
    """exp(⟨bank[contrast[i, k]], anchor[i]⟩ / T): each sample's K+1 rows gathered, then dotted."""
    b, k1 = contrast.shape
    out = np.empty((b, k1))
    for i in range(b):
        for k in range(k1):
            row = bank[contrast[i, k]]
            out[i, k] = math.exp(sum(row[c] * anchor[i, c] for c in range(len(row))) / temperature)
    return out


def ref_crd_nce(scores: np.ndarray, z: float, n_data: int) -> float:
    """−(1/B)[Σ_i log(P_i0/(P_i0 + mPn + ε)) + Σ_i Σ_k log(mPn/(P_ik + mPn + ε))], P = s/Z."""
    p = scores / z
    b, m = p.shape[0], p.shape[1] - 1
    mpn = m * (1.0 / n_data)
    total = 0.0
    for i in range(b):
        total += math.log(p[i, 0] / (p[i, 0] + mpn + CRD_EPS))
        for k in range(1, m + 1):
            total += math.log(mpn / (p[i, k] + mpn + CRD_EPS))
    return -total / b


def ref_crd(
    emb_s, emb_t, bank_s, bank_t, contrast, n_data, temperature
) -> tuple[float, float, float]:
    """(loss, Z_s, Z_t) with Z set from these scores as on CRD's first batch: mean score × N.
    Student anchor against the teacher bank + teacher anchor against the student bank."""
    scores_s = ref_crd_scores(emb_s, bank_t, contrast, temperature)
    scores_t = ref_crd_scores(emb_t, bank_s, contrast, temperature)
    z_s, z_t = scores_s.mean() * n_data, scores_t.mean() * n_data
    return ref_crd_nce(scores_s, z_s, n_data) + ref_crd_nce(scores_t, z_t, n_data), z_s, z_t


def ref_mse(a: np.ndarray, b: np.ndarray) -> float:
    d = (a - b).ravel()
    return float((d * d).sum() / d.size)


def ref_srrl(h, f_t, pred, z_t) -> float:
    return ref_mse(h, f_t) + ref_mse(pred, z_t)


def ref_semckd_attention(q: np.ndarray, k: np.ndarray, soft: float) -> np.ndarray:
    b, n_s, d = q.shape
    n_t = k.shape[1]
    out = np.empty((b, n_s, n_t))
    for s in range(b):
        for i in range(n_s):
            e = np.array(
                [sum(q[s, i, c] * k[s, j, c] for c in range(d)) / soft for j in range(n_t)]
            )
            e = np.exp(e - e.max())
            out[s, i] = e / e.sum()
    return out


def ref_semckd(projected, targets, attention: np.ndarray) -> float:
    b, n_s, n_t = attention.shape
    total = 0.0
    for s in range(b):
        for i in range(n_s):
            for j in range(n_t):
                total += attention[s, i, j] * ref_mse(projected[i][j][s], targets[i][j][s])
    return total / (b * n_s)


# ---------------------------------------------------------------------------------------------
# CRD pure losses
# ---------------------------------------------------------------------------------------------

CRD_CASES = [  # (batch, K, dim, n_data, temperature)
    (1, 1, 2, 4, 0.5),
    (2, 5, 8, 50, 0.07),
    (4, 16, 16, 1000, 0.07),
    (3, 64, 32, 5_000, 0.07),
    (5, 7, 4, 20, 1.0),
    (3, 40, 8, 6, 0.07),  # K > N: indices repeat (drawn with replacement)
]


def _crd_inputs(rng, b, k, d, n):
    emb_s, emb_t = _unit_rows(rng, b, d), _unit_rows(rng, b, d)
    bank_s, bank_t = _unit_rows(rng, n, d), _unit_rows(rng, n, d)
    contrast = rng.integers(0, n, size=(b, k + 1))
    return emb_s, emb_t, bank_s, bank_t, contrast


def _crd_torch(
    emb_s, emb_t, bank_s, bank_t, contrast, z_s, z_t, n, temperature, dtype=torch.float64
):
    idx = torch.tensor(contrast, dtype=torch.int64)
    scores_s = losses.crd_scores(_t(emb_s, dtype), _t(bank_t, dtype), idx, temperature)
    scores_t = losses.crd_scores(_t(emb_t, dtype), _t(bank_s, dtype), idx, temperature)
    return losses.crd(scores_s, scores_t, z_s, z_t, n)


@pytest.mark.parametrize(("b", "k", "d", "n", "temperature"), CRD_CASES)
def test_crd_matches_float64_reference(b, k, d, n, temperature):
    rng = np.random.default_rng(b * 1000 + k)
    emb_s, emb_t, bank_s, bank_t, contrast = _crd_inputs(rng, b, k, d, n)
    got_scores = losses.crd_scores(_t(emb_s), _t(bank_t), torch.tensor(contrast), temperature)
    assert got_scores.shape == (b, k + 1) and got_scores.dtype == torch.float64
    np.testing.assert_allclose(
        got_scores.numpy(), ref_crd_scores(emb_s, bank_t, contrast, temperature), rtol=1e-12
    )
    expected, z_s, z_t = ref_crd(emb_s, emb_t, bank_s, bank_t, contrast, n, temperature)
    got = _crd_torch(emb_s, emb_t, bank_s, bank_t, contrast, z_s, z_t, n, temperature)
    assert got.dtype == torch.float64 and got.shape == ()
    assert got.item() == pytest.approx(expected, rel=1e-10)
    # Z may also be a 0-dim tensor (the method's buffer).
    got_t = _crd_torch(
        emb_s,
        emb_t,
        bank_s,
        bank_t,
        contrast,
        torch.tensor(z_s, dtype=torch.float64),
        torch.tensor(z_t, dtype=torch.float64),
        n,
        temperature,
    )
    assert got_t.item() == pytest.approx(got.item(), rel=1e-14)


@pytest.mark.parametrize(("b", "k", "d", "n", "temperature"), CRD_CASES)
def test_crd_float32_close_to_float64_reference(b, k, d, n, temperature):
    rng = np.random.default_rng(7 + b * 1000 + k)
    *floats, contrast = _crd_inputs(rng, b, k, d, n)
    emb_s, emb_t, bank_s, bank_t = (x.astype(np.float32).astype(np.float64) for x in floats)
    expected, z_s, z_t = ref_crd(emb_s, emb_t, bank_s, bank_t, contrast, n, temperature)
    got = _crd_torch(
        emb_s, emb_t, bank_s, bank_t, contrast, z_s, z_t, n, temperature, torch.float32
    )
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(expected, rel=2e-5)


def test_crd_nce_by_hand():
    # scores (2, 1, 4) / Z 2 → P = (1, 0.5, 2); N = 4, m = 2 → m·P_n = 0.5:
    # −[ln(1/(1.5+ε)) + ln(0.5/(1.0+ε)) + ln(0.5/(2.5+ε))] ≈ ln 1.5 + ln 2 + ln 5 = ln 15 = 2.708050201
    # (+2.07e-7 from ε): 2.7080504077688685
    scores = torch.tensor([[2.0, 1.0, 4.0]], dtype=torch.float64)
    assert losses.crd_nce(scores, 2.0, 4).item() == pytest.approx(2.7080504077688685, rel=1e-13)
    assert losses.crd_nce(scores, 2.0, 4).item() == pytest.approx(math.log(15.0), rel=1e-6)
    # A second sample with P = (0.5, 0.5, 0.5) adds −3·ln(0.5/(1+ε)) ≈ 3 ln 2; the sum is over
    # samples and negatives, divided by B = 2 only: (2.7080504078 + 2.0794418) / 2 = 2.3937461247
    two = torch.tensor([[2.0, 1.0, 4.0], [1.0, 1.0, 1.0]], dtype=torch.float64)
    assert losses.crd_nce(two, 2.0, 4).item() == pytest.approx(2.393746124724345, rel=1e-13)
    # crd = student-side NCE + teacher-side NCE, each with its own Z: the first sample's scores
    # (Z 2) plus teacher scores (0.5, 0.5, 0.5) with Z 1 (−3·ln(0.5/(1+ε)) = 2.0794421):
    # 2.7080504078 + 2.0794420417 = 4.78749224944869 (= 2 × the two-sample mean above)
    teacher_side = torch.tensor([[0.5, 0.5, 0.5]], dtype=torch.float64)
    assert losses.crd(scores, teacher_side, 2.0, 1.0, 4).item() == pytest.approx(
        4.78749224944869, rel=1e-13
    )
    assert losses.crd(teacher_side, scores, 1.0, 2.0, 4).item() == pytest.approx(
        4.78749224944869, rel=1e-13
    )
    assert losses.crd(scores, teacher_side, 1.0, 2.0, 4).item() != pytest.approx(
        4.78749224944869, rel=1e-3
    )


def test_crd_scores_by_hand():
    # anchor (1, 0); bank rows (1, 0), (0, 1), (0.6, 0.8); contrast (0, 1, 2, 0); T = 0.5
    # → exp(2), exp(0), exp(1.2), exp(2)
    anchor = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    bank = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]], dtype=torch.float64)
    got = losses.crd_scores(anchor, bank, torch.tensor([[0, 1, 2, 0]]), 0.5)
    assert got.shape == (1, 4)
    assert got.flatten().tolist() == pytest.approx(
        [math.exp(2.0), 1.0, math.exp(1.2), math.exp(2.0)], rel=1e-15
    )


def test_crd_gradient_reaches_embeddings_not_banks():
    rng = np.random.default_rng(5)
    emb_s, emb_t, bank_s, bank_t, contrast = _crd_inputs(rng, 3, 6, 8, 100)
    emb_s, emb_t, bank_s, bank_t = (
        _t(x).requires_grad_(True) for x in (emb_s, emb_t, bank_s, bank_t)
    )
    idx = torch.tensor(contrast)
    scores_s, scores_t = (
        losses.crd_scores(emb_s, bank_t, idx, 0.07),
        losses.crd_scores(emb_t, bank_s, idx, 0.07),
    )
    losses.crd(scores_s, scores_t, 50.0, 60.0, 100).backward()
    assert bank_s.grad is None and bank_t.grad is None
    assert emb_s.grad is not None and emb_s.grad.abs().sum() > 0
    assert (
        emb_t.grad is not None and emb_t.grad.abs().sum() > 0
    )  # the teacher's embedding head learns
    # The anchors' gradient agrees with finite differences (repeated contrast indices included).
    e_s, e_t, b_s, b_t, c = _crd_inputs(rng, 2, 5, 4, 3)
    e_s, e_t = _t(e_s).requires_grad_(True), _t(e_t).requires_grad_(True)
    b_s, b_t, c = _t(b_s), _t(b_t), torch.tensor(c)
    assert torch.autograd.gradcheck(
        lambda a, b: losses.crd(
            losses.crd_scores(a, b_t, c, 0.5), losses.crd_scores(b, b_s, c, 0.5), 7.0, 9.0, 3
        ),
        (e_s, e_t),
    )


# ---------------------------------------------------------------------------------------------
# SRRL pure loss
# ---------------------------------------------------------------------------------------------

SRRL_CASES = [(1, 1, 2), (4, 8, 10), (16, 64, 100), (3, 256, 7)]  # (batch, C_t, classes)


@pytest.mark.parametrize(("b", "c", "k"), SRRL_CASES)
def test_srrl_matches_float64_reference(b, c, k):
    rng = np.random.default_rng(b + c + k)
    h, f_t = rng.standard_normal((b, c)), rng.standard_normal((b, c))
    pred, z_t = rng.standard_normal((b, k)) * 3, rng.standard_normal((b, k)) * 3
    got = losses.srrl(_t(h), _t(f_t), _t(pred), _t(z_t))
    assert got.dtype == torch.float64 and got.shape == ()
    assert got.item() == pytest.approx(ref_srrl(h, f_t, pred, z_t), rel=1e-10)
    args32 = [x.astype(np.float32) for x in (h, f_t, pred, z_t)]
    got32 = losses.srrl(*(_t(x, torch.float32) for x in args32))
    assert got32.dtype == torch.float32
    assert got32.item() == pytest.approx(
        ref_srrl(*(x.astype(np.float64) for x in args32)), rel=1e-5
    )


def test_srrl_by_hand_and_gradients():
    # h (1, 2) vs f_t (0, 0): mean(1, 4) = 2.5; pred (1) vs z_t (3): 4 → 6.5
    h = torch.tensor([[1.0, 2.0]], dtype=torch.float64, requires_grad=True)
    f_t = torch.zeros(1, 2, dtype=torch.float64, requires_grad=True)
    pred = torch.tensor([[1.0]], dtype=torch.float64, requires_grad=True)
    z_t = torch.tensor([[3.0]], dtype=torch.float64, requires_grad=True)
    loss = losses.srrl(h, f_t, pred, z_t)
    assert loss.item() == pytest.approx(6.5, rel=1e-15)
    loss.backward()
    assert f_t.grad is None and z_t.grad is None
    assert h.grad.flatten().tolist() == pytest.approx([1.0, 2.0])  # 2(h − f)/2
    assert pred.grad.flatten().tolist() == pytest.approx([-4.0])  # 2(pred − z)/1


# ---------------------------------------------------------------------------------------------
# SemCKD pure losses
# ---------------------------------------------------------------------------------------------

SEMCKD_CASES = [  # (batch, n_s, n_t, d)
    (1, 1, 1, 2),
    (2, 1, 2, 4),
    (4, 3, 3, 8),
    (8, 2, 4, 2),
]


def _semckd_maps(rng, b, n_s, n_t):
    shapes = [(rng.integers(1, 5), rng.integers(1, 4)) for _ in range(n_t)]  # (C_j, H_ij)
    projected = [[rng.standard_normal((b, c, h, h)) for c, h in shapes] for _ in range(n_s)]
    targets = [[rng.standard_normal((b, c, h, h)) for c, h in shapes] for _ in range(n_s)]
    return projected, targets


@pytest.mark.parametrize(("b", "n_s", "n_t", "d"), SEMCKD_CASES)
@pytest.mark.parametrize("soft", [1.0, 0.5])
def test_semckd_matches_float64_reference(b, n_s, n_t, d, soft):
    rng = np.random.default_rng(100 * b + 10 * n_s + n_t)
    q, k = _unit_rows(rng, b, n_s, d), _unit_rows(rng, b, n_t, d)
    att = losses.semckd_attention(_t(q), _t(k), soft)
    assert att.shape == (b, n_s, n_t)
    np.testing.assert_allclose(
        att.numpy(), ref_semckd_attention(q, k, soft), rtol=1e-12, atol=1e-15
    )
    projected, targets = _semckd_maps(rng, b, n_s, n_t)
    att_np = ref_semckd_attention(q, k, soft)
    got = losses.semckd(
        [[_t(x) for x in row] for row in projected],
        [[_t(x) for x in row] for row in targets],
        _t(att_np),
    )
    assert got.dtype == torch.float64 and got.shape == ()
    assert got.item() == pytest.approx(ref_semckd(projected, targets, att_np), rel=1e-10)
    # float32
    p32 = [[x.astype(np.float32) for x in row] for row in projected]
    t32 = [[x.astype(np.float32) for x in row] for row in targets]
    a32 = att_np.astype(np.float32)
    got32 = losses.semckd(
        [[_t(x, torch.float32) for x in row] for row in p32],
        [[_t(x, torch.float32) for x in row] for row in t32],
        _t(a32, torch.float32),
    )
    assert got32.dtype == torch.float32
    ref32 = ref_semckd(
        [[x.astype(np.float64) for x in r] for r in p32],
        [[x.astype(np.float64) for x in r] for r in t32],
        a32.astype(np.float64),
    )
    assert got32.item() == pytest.approx(ref32, rel=1e-5)


def test_semckd_by_hand():
    # B = 2, n_s = 1, n_t = 2. Sample 0: pair (0,0) MSE 1 (one element, 1 vs 0); pair (0,1) MSE
    # (1² + 3²)/2 = 5; attention (0.25, 0.75) → 0.25 + 3.75 = 4. Sample 1: MSEs 0 and 2, attention
    # (0.5, 0.5) → 1. Sum 5 over B·n_s = 2 → 2.5.
    p00 = torch.tensor([1.0, 0.0], dtype=torch.float64).reshape(2, 1, 1, 1)
    t00 = torch.zeros(2, 1, 1, 1, dtype=torch.float64)
    p01 = torch.tensor([[1.0, 3.0], [2.0, 0.0]], dtype=torch.float64).reshape(2, 2, 1, 1)
    t01 = torch.tensor([[0.0, 0.0], [0.0, 0.0]], dtype=torch.float64).reshape(2, 2, 1, 1)
    att = torch.tensor([[[0.25, 0.75]], [[0.5, 0.5]]], dtype=torch.float64)
    assert losses.semckd([[p00, p01]], [[t00, t01]], att).item() == pytest.approx(2.5, rel=1e-15)
    # attention: q = (1, 0), keys (1, 0) and (0, 1), soft 1 → softmax(1, 0) = (e/(e+1), 1/(e+1))
    q = torch.tensor([[[1.0, 0.0]]], dtype=torch.float64)
    k = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]], dtype=torch.float64)
    assert losses.semckd_attention(q, k, 1.0).flatten().tolist() == pytest.approx(
        [0.7310585786300049, 0.2689414213699951], rel=1e-15
    )
    # soft = 0.5 doubles the energies: softmax(2, 0) = (e²/(e²+1), 1/(e²+1))
    assert losses.semckd_attention(q, k, 0.5).flatten().tolist() == pytest.approx(
        [math.exp(2) / (math.exp(2) + 1), 1 / (math.exp(2) + 1)], rel=1e-15
    )


def test_semckd_gradients_skip_targets():
    rng = np.random.default_rng(9)
    projected, targets = _semckd_maps(rng, 3, 2, 2)
    p = [[_t(x).requires_grad_(True) for x in row] for row in projected]
    t = [[_t(x).requires_grad_(True) for x in row] for row in targets]
    q = _t(_unit_rows(rng, 3, 2, 4)).requires_grad_(True)
    k = _t(_unit_rows(rng, 3, 2, 4)).requires_grad_(True)
    losses.semckd(p, t, losses.semckd_attention(q, k)).backward()
    assert all(x.grad is None for row in t for x in row)
    assert all(x.grad is not None and x.grad.abs().sum() > 0 for row in p for x in row)
    # The attention is trained through the loss (queries and keys both get gradients).
    assert q.grad.abs().sum() > 0 and k.grad.abs().sum() > 0


def test_loss_functions_are_exported():
    from kdbench.losses import contrastive

    assert set(contrastive.__all__) == {
        "crd",
        "crd_nce",
        "crd_scores",
        "semckd",
        "semckd_attention",
        "srrl",
    }
    for name in contrastive.__all__:
        assert getattr(losses, name) is getattr(contrastive, name)
