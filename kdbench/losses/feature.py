"""Feature-based distillation losses (functions of feature maps or embeddings)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from kdbench.losses.precision import fp32

__all__ = ["mse", "simkd", "fitnet", "at", "vid", "nst", "ab", "ft", "fsp"]


@fp32
def mse(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``nn.MSELoss()``: the mean over all elements of (output − target)², the target detached (FT's paraphraser
    reconstruction, RepDistiller helper/pretrain.py; SimKD's output-side ℓ2 through W_t, Table S.7)."""
    return F.mse_loss(output, target.detach())


@fp32
def simkd(projected_s: torch.Tensor, feat_t: torch.Tensor) -> torch.Tensor:
    """SimKD (Chen et al., CVPR 2022, Eq. 3): feature alignment ‖P(f_s) − f_t‖².

    The released code uses ``nn.MSELoss()``: the mean over all B·C·H·W elements.
    """
    return F.mse_loss(projected_s, feat_t.detach())


# Helpers used by the feature methods too (kept out of ``__all__`` so the star import in
# ``kdbench.losses`` does not re-export them; import them from this module).


def pool_to_common_size(
    feat_s: torch.Tensor, feat_t: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """RepDistiller's spatial alignment: the map with the larger height is adaptive-average-pooled
    to the smaller height, as a **square** (H × H) map; equal heights pass through unchanged."""
    s_h, t_h = feat_s.shape[2], feat_t.shape[2]
    if s_h > t_h:
        feat_s = F.adaptive_avg_pool2d(feat_s, (t_h, t_h))
    elif s_h < t_h:
        feat_t = F.adaptive_avg_pool2d(feat_t, (s_h, s_h))
    return feat_s, feat_t


def attention_map(feat: torch.Tensor, p: float = 2) -> torch.Tensor:
    """AT's spatial attention: mean over channels of f^p, flattened per sample, L2-normalised
    (``F.normalize``: x / max(‖x‖₂, 1e-12); the norm is L2 whatever p is, as in RepDistiller)."""
    return F.normalize(feat.pow(p).mean(1).reshape(feat.shape[0], -1), p=2.0, dim=1)


@fp32
def fitnet(regressed_s: torch.Tensor, feat_t: torch.Tensor) -> torch.Tensor:
    """FitNet hint loss (Romero et al., ICLR 2015) as in RepDistiller/SimKD ``HintLoss``:
    ``nn.MSELoss()`` between the regressed student hint and the teacher hint, i.e. the mean over
    all B·C·H·W elements (no ½). Shapes must already match (the regressor and, in the SimKD
    code's fallback, pooling of the teacher map do that; see ``kdbench.methods.fitnet``)."""
    return F.mse_loss(regressed_s, feat_t.detach())


@fp32
def at(feat_s: torch.Tensor, feat_t: torch.Tensor, p: float = 2) -> torch.Tensor:
    """Attention transfer (Zagoruyko & Komodakis, ICLR 2017) for **one** tap pair, RepDistiller's
    ``Attention.at_loss``: pool the larger map to the smaller square size, then the mean over
    (batch × positions) of the squared difference of the two attention vectors
    (:func:`attention_map`). The paper's non-squared ‖·‖₂ with β/2 is *not* used — the benchmark
    numbers come from this squared-mean form. The method sums this over the f1..fk pairs."""
    feat_s, feat_t = pool_to_common_size(feat_s, feat_t.detach())
    return (attention_map(feat_s, p) - attention_map(feat_t, p)).pow(2).mean()


@fp32
def vid(
    pred_mean: torch.Tensor, feat_t: torch.Tensor, log_scale: torch.Tensor, eps: float = 1e-5
) -> torch.Tensor:
    """VID (Ahn et al., CVPR 2019) for **one** tap pair, RepDistiller's ``VIDLoss.forward`` after
    its spatial alignment and regressor: the Gaussian negative log-likelihood (without the
    constant ½·log 2π)

        mean over (B, C, H, W) of ½·((μ − t)² / σ²_c + log σ²_c),  σ²_c = log(1 + exp(a_c)) + eps,

    with μ = ``pred_mean`` (the regressor's output on the aligned student map), t = ``feat_t``
    (the aligned teacher map, same shape) and a_c = ``log_scale`` (one value per teacher
    channel; gradients reach it, as in RepDistiller where it is trained)."""
    variance = (torch.log(1.0 + torch.exp(log_scale)) + eps).reshape(1, -1, 1, 1)
    return (0.5 * ((pred_mean - feat_t.detach()) ** 2 / variance + torch.log(variance))).mean()


def _poly_kernel(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(aᵀb)² between every channel vector of a and of b, per sample: (B, C_b, C_a).

    RepDistiller builds this by broadcasting (B, 1, C_a, N) · (B, C_b, 1, N) and summing N; a
    batched matmul gives the same numbers without the B·C_a·C_b·N intermediate."""
    return torch.bmm(b, a.transpose(1, 2)).pow(2)


@fp32
def nst(feat_s: torch.Tensor, feat_t: torch.Tensor) -> torch.Tensor:
    """Neuron selectivity transfer (Huang & Wang, 2017) for **one** tap pair, RepDistiller's
    ``NSTLoss.nst_loss``: pool the larger map to the smaller square size, reshape to (B, C, HW),
    L2-normalise each channel's spatial vector, then the squared MMD with the polynomial kernel
    k(x, y) = (xᵀy)²:

        mean K(t, t) + mean K(s, s) − 2·mean K(s, t),   means over B × C × C'.

    (The K(t, t) term is a constant; it is kept so the value equals the released code's.) The
    method sums this over the f1..fk pairs."""
    feat_s, feat_t = pool_to_common_size(feat_s, feat_t.detach())
    s = F.normalize(feat_s.reshape(feat_s.shape[0], feat_s.shape[1], -1), dim=2)
    t = F.normalize(feat_t.reshape(feat_t.shape[0], feat_t.shape[1], -1), dim=2)
    return _poly_kernel(t, t).mean() + _poly_kernel(s, s).mean() - 2 * _poly_kernel(s, t).mean()


@fp32
def ab(
    connected_s: Sequence[torch.Tensor], preact_t: Sequence[torch.Tensor], margin: float = 1.0
) -> torch.Tensor:
    """Activation-boundary loss (Heo et al., AAAI 2019) over all tap pairs, RepDistiller's
    ``ABLoss`` summed as its pre-training step sums it.

    ``connected_s[i]`` = the connector's output on the student's preact tap i, ``preact_t[i]`` =
    the teacher's preact tap i (same shape). Per pair, with margin m and s, t elementwise, the sum
    over **all** elements of

        (s + m)² · [s > −m and t ≤ 0]  +  (s − m)² · [s ≤ m and t > 0];

    pair i of n (0-based, shallowest first) is weighted 2^(i − n + 1) (deepest 1, then ½, ¼, …),
    divided by the batch size and multiplied by 3/1000; the weighted pair losses are summed."""
    if len(connected_s) != len(preact_t) or not connected_s:
        raise ValueError(
            f"ab: need the same non-zero number of student and teacher taps, got {len(connected_s)} and {len(preact_t)}"
        )
    n = len(connected_s)
    batch = connected_s[0].shape[0]
    total = connected_s[0].new_zeros(())
    for i, (s, t) in enumerate(zip(connected_s, preact_t)):
        t = t.detach()
        off = ((s > -margin) & (t <= 0)).to(s.dtype)  # teacher neuron inactive: push s below −m
        on = ((s <= margin) & (t > 0)).to(s.dtype)  # teacher neuron active: push s above +m
        pair = ((s + margin).pow(2) * off + (s - margin).pow(2) * on).sum()
        total = total + 2.0 ** (i - n + 1) * pair / batch / 1000 * 3
    return total


@fp32
def ft(
    factor_s: torch.Tensor, factor_t: torch.Tensor, p1: float = 2, p2: float = 1
) -> torch.Tensor:
    """Factor transfer (Kim et al., NeurIPS 2018) as in RepDistiller's ``FactorTransfer``:
    ``factor_s`` = the translator's output on the student map, ``factor_t`` = the paraphraser
    encoder's output on the teacher map. The larger map is pooled to the smaller square size;
    each factor is collapsed RD-style to the L2-normalised, flattened channel-mean of x^p1
    (:func:`attention_map`; the paper normalises the whole C×H×W factor instead); the loss is the
    mean over (batch × positions) of |difference| for p2 = 1, else of difference^p2."""
    factor_s, factor_t = pool_to_common_size(factor_s, factor_t.detach())
    diff = attention_map(factor_s, p1) - attention_map(factor_t, p1)
    return diff.abs().mean() if p2 == 1 else diff.pow(p2).mean()


def fsp_matrix(bottom: torch.Tensor, top: torch.Tensor) -> torch.Tensor:
    """FSP ("flow of solution procedure") matrix of two consecutive taps of one network: the larger
    map is pooled to the smaller square size, then G[b, i, j] = mean over positions of
    top[b, i] · bottom[b, j] — shape (B, C_top, C_bottom), RepDistiller's ``compute_fsp`` order.
    (RepDistiller broadcasts a B×C_top×C_bottom×HW product; a batched matmul gives the same
    numbers without that intermediate.)"""
    bottom, top = pool_to_common_size(bottom, top)
    b = bottom.reshape(bottom.shape[0], bottom.shape[1], -1)
    t = top.reshape(top.shape[0], top.shape[1], -1)
    return torch.bmm(t, b.transpose(1, 2)) / b.shape[2]


@fp32
def fsp(feats_s: Sequence[torch.Tensor], feats_t: Sequence[torch.Tensor]) -> torch.Tensor:
    """FSP loss (Yim et al., CVPR 2017) as RepDistiller's ``FSP`` summed by its pre-training step:
    for every consecutive pair of taps (f0→f1, f1→f2, …) the FSP matrices of both networks
    (:func:`fsp_matrix`) are compared by the element-mean squared difference (over B × C × C');
    the pair losses are summed. Needs the same number of taps and equal channel counts at every tap
    (spatial sizes may differ between the networks)."""
    s_c, t_c = [f.shape[1] for f in feats_s], [f.shape[1] for f in feats_t]
    if s_c != t_c or len(s_c) < 2:
        raise ValueError(
            f"fsp: need equal channel counts at every tap (at least two taps), got {s_c} and {t_c}"
        )
    feats_t = [f.detach() for f in feats_t]
    total = feats_s[0].new_zeros(())
    for i in range(len(feats_s) - 1):
        g_s = fsp_matrix(feats_s[i], feats_s[i + 1])
        g_t = fsp_matrix(feats_t[i], feats_t[i + 1])
        total = total + (g_s - g_t).pow(2).mean()
    return total


# --- OFD and ReviewKD (appended) ---------------------------------------------------------------

__all__ += ["ofd", "ofd_margins", "reviewkd"]

_INV_SQRT_2PI = 0.3989422804014327  # 1/√(2π)


@fp32
def ofd_margins(gamma: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """OFD's per-channel margin (Heo et al., ICCV 2019) from the (γ, β) of the teacher's
    BN-before-ReLU, as clovaai/overhaul-distillation and mdistiller compute it once at start:
    with s = |γ|, m = β (the pre-ReLU response taken as N(m, s²)),

        margin = m − s·φ(m/s) / Φ(−m/s)   (the mean of its negative part)  if Φ(−m/s) > 0.001,
        margin = −3s                                                        otherwise.

    Computed in float64 (the references use Python floats) and returned in ``gamma``'s dtype,
    shape (C,). No gradient (γ, β are read as constants)."""
    s = gamma.detach().to(torch.float64).abs()
    m = beta.detach().to(torch.float64)
    cdf = torch.special.ndtr(-m / s)
    pdf = torch.exp(-0.5 * (m / s) ** 2) * _INV_SQRT_2PI
    margin = torch.where(cdf > 0.001, m - s * pdf / cdf, -3.0 * s)
    return margin.to(gamma.dtype)


@fp32
def ofd(
    connected_s: Sequence[torch.Tensor],
    preact_t: Sequence[torch.Tensor],
    margins: Sequence[torch.Tensor],
) -> torch.Tensor:
    """OFD's distillation loss (Heo et al., ICCV 2019) over all tap pairs, as mdistiller's
    ``OFD.ofd_loss`` / clovaai ``Distiller.forward`` compute it (before the method weight).

    ``connected_s[i]`` = the connector's output on the student's preact tap (B, C, H, W),
    ``preact_t[i]`` = the teacher's preact tap (detached here), adaptive-average-pooled to the
    student's H × W; ``margins[i]`` = (C,) from :func:`ofd_margins`. Per pair, elementwise, with
    t' = max(t, margin): the partial L2 (s − t')² where s > t' or t' > 0 (else 0), summed over
    C·H·W and averaged over the batch; pair i of n (0-based, shallowest first) is weighted
    1/2^(n−i−1) (deepest 1, then ½, ¼, …); the weighted pair losses are summed. The released CIFAR
    code multiplies the total by 1e-3 (the method's weight)."""
    if not (len(connected_s) == len(preact_t) == len(margins)) or not connected_s:
        raise ValueError(
            f"ofd: need the same non-zero number of student taps, teacher taps and margins, got "
            f"{len(connected_s)}, {len(preact_t)} and {len(margins)}"
        )
    n = len(connected_s)
    total = connected_s[0].new_zeros(())
    for i, (s, t, margin) in enumerate(zip(connected_s, preact_t, margins)):
        t = F.adaptive_avg_pool2d(t.detach(), (s.shape[-2], s.shape[-1]))
        t = torch.maximum(t, margin.detach().to(s).reshape(1, -1, 1, 1))
        mask = ((s > t) | (t > 0)).to(s.dtype)
        pair = ((s - t).pow(2) * mask).mean(dim=0).sum()
        total = total + pair / 2.0 ** (n - i - 1)
    return total


@fp32
def reviewkd(fused_s: Sequence[torch.Tensor], feats_t: Sequence[torch.Tensor]) -> torch.Tensor:
    """ReviewKD's hierarchical context loss (HCL; Chen et al., CVPR 2021) as its released
    ``hcl`` / mdistiller's ``hcl_loss`` compute it (before the method weight and warm-up).

    ``fused_s[i]`` = the ABF output of level i, ``feats_t[i]`` = the teacher tap of the same shape
    (detached here). Per level with an H × W map: the element-mean MSE at full resolution (weight
    1), plus the element-mean MSE after adaptive-average-pooling both maps to 4×4, 2×2 and 1×1 —
    only for sizes l < H — weighted ½, ¼, ⅛ in the order those pooled terms are *used* (a 4×4 map
    gets ½ for 2×2 and ¼ for 1×1); the level's sum is divided by the sum of the weights used. The
    level losses are summed."""
    if len(fused_s) != len(feats_t) or not fused_s:
        raise ValueError(
            f"reviewkd: need the same non-zero number of student and teacher levels, got {len(fused_s)} and {len(feats_t)}"
        )
    total = fused_s[0].new_zeros(())
    for s, t in zip(fused_s, feats_t):
        t = t.detach()
        h = s.shape[2]
        level = F.mse_loss(s, t)
        weight, weights = 1.0, 1.0
        for size in (4, 2, 1):
            if size >= h:
                continue
            weight /= 2.0
            level = (
                level
                + F.mse_loss(F.adaptive_avg_pool2d(s, size), F.adaptive_avg_pool2d(t, size))
                * weight
            )
            weights += weight
        total = total + level / weights
    return total
