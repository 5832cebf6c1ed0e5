"""OFD and ReviewKD: golden values of their losses against independent float64 numpy references
written from mdistiller's ``OFD.py`` / ``ReviewKD.py`` (no torch.nn.functional), hand-computed literals
and gradient isolation of the teacher.

(The session-wide one-thread fixture of conftest.py applies.)
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from kdbench import losses

SEED_SHAPES = [
    # (batch, [(C, H_s, H_t) per pair])  — teacher maps pooled to the student's size
    (2, [(3, 4, 4)]),
    (3, [(4, 8, 16), (5, 4, 8), (6, 2, 4)]),
    (4, [(2, 1, 1), (3, 4, 8)]),
]


# ---------------------------------------------------------------------------------------------
# numpy references (float64)
# ---------------------------------------------------------------------------------------------


def np_adaptive_avg_pool(x: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """PyTorch's adaptive average pooling: cell i covers [floor(i·H/o), ceil((i+1)·H/o))."""
    b, c, h, w = x.shape
    out = np.zeros((b, c, out_h, out_w))
    for i in range(out_h):
        h0, h1 = (i * h) // out_h, -((-(i + 1) * h) // out_h)
        for j in range(out_w):
            w0, w1 = (j * w) // out_w, -((-(j + 1) * w) // out_w)
            out[:, :, i, j] = x[:, :, h0:h1, w0:w1].mean(axis=(2, 3))
    return out


def np_ofd_margins(gamma: np.ndarray, beta: np.ndarray) -> np.ndarray:
    """Per channel: s = |γ|, m = β; Φ(−m/s) > 0.001 ? m − s·φ(m/s)/Φ(−m/s) : −3s."""
    out = []
    for g, b in zip(gamma.tolist(), beta.tolist()):
        s, m = abs(g), b
        cdf = 0.5 * math.erfc((m / s) / math.sqrt(2.0))  # Φ(−m/s)
        pdf = math.exp(-((m / s) ** 2) / 2.0) / math.sqrt(2.0 * math.pi)
        out.append(m - s * pdf / cdf if cdf > 0.001 else -3.0 * s)
    return np.array(out)


def np_ofd(
    students: list[np.ndarray], teachers: list[np.ndarray], margins: list[np.ndarray]
) -> float:
    """mdistiller's three-case form of the partial L2 (the implementation uses the clovaai
    max(t, margin) form; they agree because margins are negative)."""
    n, total = len(students), 0.0
    for i, (s, t, m) in enumerate(zip(students, teachers, margins)):
        t = np_adaptive_avg_pool(t, s.shape[2], s.shape[3])
        m = m.reshape(1, -1, 1, 1)
        loss = (
            (s - m) ** 2 * ((s > m) & (t <= m))
            + (s - t) ** 2 * ((s > t) & (t > m) & (t <= 0))
            + (s - t) ** 2 * (t > 0)
        )
        total += loss.sum() / s.shape[0] / 2 ** (n - i - 1)
    return total


def np_hcl(students: list[np.ndarray], teachers: list[np.ndarray]) -> float:
    total = 0.0
    for s, t in zip(students, teachers):
        h = s.shape[2]
        terms = [(1.0, ((s - t) ** 2).mean())]
        weight = 1.0
        for size in (4, 2, 1):
            if size < h:
                weight /= 2
                ps, pt = np_adaptive_avg_pool(s, size, size), np_adaptive_avg_pool(t, size, size)
                terms.append((weight, ((ps - pt) ** 2).mean()))
        total += sum(w * v for w, v in terms) / sum(w for w, _ in terms)
    return total


def tolerance(dtype: torch.dtype) -> dict[str, float]:
    return (
        {"rtol": 1e-10, "atol": 1e-12} if dtype == torch.float64 else {"rtol": 2e-5, "atol": 1e-6}
    )


# ---------------------------------------------------------------------------------------------
# OFD margins
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_ofd_margins_match_the_reference(dtype):
    g = torch.Generator().manual_seed(0)
    gamma = (torch.rand(64, generator=g) * 2 + 0.05) * torch.where(
        torch.rand(64, generator=g) < 0.3, -1.0, 1.0
    )
    beta = torch.randn(64, generator=g) * 2.5  # both branches: Φ(−m/s) above and below 0.001
    gamma, beta = gamma.to(dtype), beta.to(dtype)
    got = losses.ofd_margins(gamma, beta)
    assert got.dtype == dtype and got.shape == (64,)
    ref = np_ofd_margins(gamma.double().numpy(), beta.double().numpy())
    assert (ref == -3.0 * np.abs(gamma.double().numpy())).any() and (
        ref != -3.0 * np.abs(gamma.double().numpy())
    ).any()
    np.testing.assert_allclose(got.double().numpy(), ref, **tolerance(dtype))
    assert (got < 0).all()


def test_ofd_margins_literals():
    gamma = torch.tensor([1.0, -2.0, 1.0, 0.5], dtype=torch.float64)
    beta = torch.tensor([0.0, 0.0, 4.0, -1.0], dtype=torch.float64)
    got = losses.ofd_margins(gamma, beta).tolist()
    # β = 0: the mean of the negative half of N(0, s²) is −s·√(2/π).
    assert got[0] == pytest.approx(-math.sqrt(2 / math.pi), rel=1e-12)
    assert got[1] == pytest.approx(-2 * math.sqrt(2 / math.pi), rel=1e-12)  # |γ| is used
    # β/s = 4: Φ(−4) ≈ 3.2e-5 ≤ 0.001 → −3s.
    assert got[2] == -3.0
    # s = 0.5, m = −1: m/s = −2, φ(2) = 0.05399096651318806, Φ(2) = 0.9772498680518208:
    # −1 − 0.5 · 0.05399096651318806 / 0.9772498680518208 = −1.027623931339495
    assert got[3] == pytest.approx(-1.027623931339495, abs=1e-12)


# ---------------------------------------------------------------------------------------------
# OFD loss
# ---------------------------------------------------------------------------------------------


def random_ofd_inputs(batch: int, pairs: list[tuple[int, int, int]], dtype: torch.dtype, seed: int):
    g = torch.Generator().manual_seed(seed)
    students, teachers, margins = [], [], []
    for c, h_s, h_t in pairs:
        students.append(torch.randn(batch, c, h_s, h_s, generator=g).to(dtype))
        teachers.append((torch.randn(batch, c, h_t, h_t, generator=g) - 0.3).to(dtype))
        margins.append((-0.2 - torch.rand(c, generator=g)).to(dtype))
    return students, teachers, margins


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize(("batch", "pairs"), SEED_SHAPES)
def test_ofd_matches_the_reference(batch, pairs, dtype):
    s, t, m = random_ofd_inputs(batch, pairs, dtype, seed=len(pairs) + batch)
    got = losses.ofd(s, t, m)
    assert got.dtype == dtype and got.shape == ()
    ref = np_ofd(
        [x.double().numpy() for x in s],
        [x.double().numpy() for x in t],
        [x.double().numpy() for x in m],
    )
    np.testing.assert_allclose(got.item(), ref, **tolerance(dtype))


def test_ofd_literal():
    # Pair 0 (shallow, weight ½), margin −1, batch of two identical samples (batch mean = value):
    # s = [[1, −1], [0.5, −2]], t = [[2, −3], [−0.5, 1]] → t' = max(t, −1) = [[2, −1], [−0.5, 1]];
    # kept where s > t' or t' > 0: (1−2)², —, (0.5+0.5)², (−2−1)² → 1 + 1 + 9 = 11.
    s0 = torch.tensor([[1.0, -1.0], [0.5, -2.0]], dtype=torch.float64).expand(2, 1, 2, 2)
    t0 = torch.tensor([[2.0, -3.0], [-0.5, 1.0]], dtype=torch.float64).expand(2, 1, 2, 2)
    # Pair 1 (deepest, weight 1): teacher 2×2 [[1, 3], [−1, 1]] pooled to the student's 1×1 → 1;
    # s = 0 < 1 but t' > 0 → (0 − 1)² = 1.
    s1 = torch.zeros(2, 1, 1, 1, dtype=torch.float64)
    t1 = torch.tensor([[1.0, 3.0], [-1.0, 1.0]], dtype=torch.float64).expand(2, 1, 2, 2)
    m = [torch.tensor([-1.0], dtype=torch.float64)] * 2
    assert losses.ofd([s0, s1], [t0, t1], m).item() == pytest.approx(11 / 2 + 1, abs=1e-12)
    assert losses.ofd([s0], [t0], m[:1]).item() == pytest.approx(11.0, abs=1e-12)
    # A student below the (clamped) teacher where the teacher is inactive costs nothing.
    assert (
        losses.ofd([torch.full((1, 1, 1, 1), -5.0)], [torch.full((1, 1, 1, 1), -0.5)], m[:1]).item()
        == 0.0
    )


def test_ofd_validates_list_lengths():
    s, t, m = random_ofd_inputs(2, [(3, 4, 4), (3, 2, 2)], torch.float64, seed=0)
    with pytest.raises(ValueError, match="same non-zero number"):
        losses.ofd(s, t[:1], m)
    with pytest.raises(ValueError, match="same non-zero number"):
        losses.ofd([], [], [])


def test_ofd_gradient_reaches_only_the_student():
    s, t, m = random_ofd_inputs(3, [(4, 8, 16), (5, 4, 8)], torch.float64, seed=3)
    s = [x.requires_grad_() for x in s]
    t = [x.requires_grad_() for x in t]
    m = [x.requires_grad_() for x in m]
    losses.ofd(s, t, m).backward()
    assert all(x.grad is not None and x.grad.abs().sum() > 0 for x in s)
    assert all(x.grad is None for x in t + m)


# ---------------------------------------------------------------------------------------------
# ReviewKD HCL
# ---------------------------------------------------------------------------------------------

HCL_SHAPES = [
    (2, [(3, 1), (4, 2), (5, 4), (2, 8)]),  # every pooling case: none, 1×1, 2×2+1×1, 4×4+2×2+1×1
    (3, [(6, 16), (2, 32)]),
    (2, [(3, 7)]),  # ImageNet-like odd size: overlapping adaptive-pool cells
]


def random_levels(batch: int, levels: list[tuple[int, int]], dtype: torch.dtype, seed: int):
    g = torch.Generator().manual_seed(seed)
    s = [torch.randn(batch, c, h, h, generator=g).to(dtype) for c, h in levels]
    t = [(torch.randn(batch, c, h, h, generator=g) * 0.7 + 0.2).to(dtype) for c, h in levels]
    return s, t


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize(("batch", "levels"), HCL_SHAPES)
def test_reviewkd_hcl_matches_the_reference(batch, levels, dtype):
    s, t = random_levels(batch, levels, dtype, seed=batch * 10 + len(levels))
    got = losses.reviewkd(s, t)
    assert got.dtype == dtype and got.shape == ()
    ref = np_hcl([x.double().numpy() for x in s], [x.double().numpy() for x in t])
    np.testing.assert_allclose(got.item(), ref, **tolerance(dtype))


def test_reviewkd_hcl_literals():
    zero = torch.zeros
    # 1×1: full-resolution MSE only: (2 − 0)² = 4.
    one = losses.reviewkd(
        [torch.full((1, 1, 1, 1), 2.0, dtype=torch.float64)],
        [zero(1, 1, 1, 1, dtype=torch.float64)],
    )
    assert one.item() == pytest.approx(4.0, abs=1e-12)
    # 2×2 [[1, 2], [3, 4]] vs 0: MSE 30/4 = 7.5; 1×1 pooled 2.5² = 6.25 with weight ½ →
    # (7.5 + 3.125) / 1.5 = 85/12.
    s2 = torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=torch.float64).view(1, 1, 2, 2)
    two = losses.reviewkd([s2], [zero(1, 1, 2, 2, dtype=torch.float64)])
    assert two.item() == pytest.approx(85 / 12, abs=1e-12)
    # 4×4 arange(16) vs 0: MSE 1240/16 = 77.5; 2×2 block means [[2.5, 4.5], [10.5, 12.5]] →
    # 293/4 = 73.25 with weight ½; 1×1 mean 7.5 → 56.25 with weight ¼;
    # (77.5 + 36.625 + 14.0625) / 1.75 = 73.25. Levels are summed.
    s4 = torch.arange(16, dtype=torch.float64).view(1, 1, 4, 4)
    four = losses.reviewkd(
        [s4, s2], [zero(1, 1, 4, 4, dtype=torch.float64), zero(1, 1, 2, 2, dtype=torch.float64)]
    )
    assert four.item() == pytest.approx(73.25 + 85 / 12, abs=1e-12)


def test_reviewkd_hcl_validates_and_isolates_the_teacher():
    s, t = random_levels(2, [(3, 4), (2, 8)], torch.float64, seed=7)
    with pytest.raises(ValueError, match="same non-zero number"):
        losses.reviewkd(s, t[:1])
    s = [x.requires_grad_() for x in s]
    t = [x.requires_grad_() for x in t]
    losses.reviewkd(s, t).backward()
    assert all(x.grad is not None and x.grad.abs().sum() > 0 for x in s)
    assert all(x.grad is None for x in t)
