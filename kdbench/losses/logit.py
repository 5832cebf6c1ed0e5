"""Logit-based distillation losses (functions of student and teacher logits)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["kd", "dist"]


def kd(logits_s: torch.Tensor, logits_t: torch.Tensor, temperature: float) -> torch.Tensor:
    """Hinton et al. (2015) KD: T² · mean over the batch of KL(p_t ‖ p_s), p = softmax(z / T).

    KL is summed over classes and averaged over samples ("batchmean"), as in RepDistiller,
    mdistiller and SimKD's code (specs/methods-baselines.md §KD).
    """
    log_p_s = F.log_softmax(logits_s / temperature, dim=1)
    log_p_t = F.log_softmax(logits_t.detach() / temperature, dim=1)
    kl = F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True)
    return kl * temperature**2


def _pearson_rows(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Pearson correlation of corresponding rows; eps is added to the product of the norms."""
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    return (a * b).sum(dim=1) / (a.norm(dim=1) * b.norm(dim=1) + eps)


def dist(
    logits_s: torch.Tensor,
    logits_t: torch.Tensor,
    beta: float = 1.0,
    gamma: float = 1.0,
    temperature: float = 1.0,
) -> torch.Tensor:
    """DIST (Huang et al., NeurIPS 2022, Eq. 8–10): τ² · (β · inter + γ · intra).

    inter = 1 − mean_i ρ(Y_s[i,:], Y_t[i,:]) (across classes of each sample);
    intra = 1 − mean_j ρ(Y_s[:,j], Y_t[:,j]) (across the samples of the local batch, per class);
    Y = softmax(z / τ). The released code's τ² factor is kept (τ = 1 reproduces the paper).
    """
    y_s = F.softmax(logits_s / temperature, dim=1)
    y_t = F.softmax(logits_t.detach() / temperature, dim=1)
    inter = 1.0 - _pearson_rows(y_s, y_t).mean()
    intra = 1.0 - _pearson_rows(y_s.t(), y_t.t()).mean()
    return temperature**2 * (beta * inter + gamma * intra)
