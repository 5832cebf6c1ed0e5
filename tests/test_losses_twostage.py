"""The two-stage losses of AB, FT and FSP (RepDistiller ``distiller_zoo/{AB,FT,FSP}.py``): golden values,
hand-computed cases and gradient isolation of the teacher.

The references are written from the spec's definitions in plain numpy float64 (explicit pooling,
loops, norms; no torch.nn.functional), so they check the library rather than restate it.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from kdbench import losses
from kdbench.losses import feature

from reference import ref_align

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
