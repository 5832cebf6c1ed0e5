"""Feature-based distillation losses (functions of feature maps or embeddings)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["simkd", "fitnet", "at", "vid", "nst"]


def simkd(projected_s: torch.Tensor, feat_t: torch.Tensor) -> torch.Tensor:
    """SimKD (Chen et al., CVPR 2022, Eq. 3): feature alignment ‖P(f_s) − f_t‖².

    The released code uses ``nn.MSELoss()``: the mean over all B·C·H·W elements.
    """
    return F.mse_loss(projected_s, feat_t.detach())


# Helpers used by the feature methods too (kept out of ``__all__`` so the star import in
# ``kdbench.losses`` does not re-export them; import them from this module).


def pool_to_common_size(feat_s: torch.Tensor, feat_t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
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


def fitnet(regressed_s: torch.Tensor, feat_t: torch.Tensor) -> torch.Tensor:
    """FitNet hint loss (Romero et al., ICLR 2015) as in RepDistiller/SimKD ``HintLoss``:
    ``nn.MSELoss()`` between the regressed student hint and the teacher hint, i.e. the mean over
    all B·C·H·W elements (no ½). Shapes must already match (the regressor and, in the SimKD
    code's fallback, pooling of the teacher map do that; see ``kdbench.methods.fitnet``)."""
    return F.mse_loss(regressed_s, feat_t.detach())


def at(feat_s: torch.Tensor, feat_t: torch.Tensor, p: float = 2) -> torch.Tensor:
    """Attention transfer (Zagoruyko & Komodakis, ICLR 2017) for **one** tap pair, RepDistiller's
    ``Attention.at_loss``: pool the larger map to the smaller square size, then the mean over
    (batch × positions) of the squared difference of the two attention vectors
    (:func:`attention_map`). The paper's non-squared ‖·‖₂ with β/2 is *not* used — the benchmark
    numbers come from this squared-mean form. The method sums this over the f1..fk pairs."""
    feat_s, feat_t = pool_to_common_size(feat_s, feat_t.detach())
    return (attention_map(feat_s, p) - attention_map(feat_t, p)).pow(2).mean()


def vid(pred_mean: torch.Tensor, feat_t: torch.Tensor, log_scale: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
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
