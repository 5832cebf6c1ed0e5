"""Relational losses: similarities between samples or features (SP, CC, RKD, PKT).

All four follow RepDistiller's ``distiller_zoo`` (``SP.py``, ``CC.py``, ``RKD.py``, ``PKT.py``) on
the same inputs. Every one compares relations *within the
batch*, so student and teacher tensors must come from the same samples in the same order.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kdbench.losses.precision import fp32

__all__ = ["sp", "cc", "rkd", "pkt"]


@fp32
def sp(feat_s: torch.Tensor, feat_t: torch.Tensor) -> torch.Tensor:
    """Similarity-preserving KD (Tung & Mori, ICCV 2019) for **one** tap pair, RepDistiller's
    ``Similarity.similarity_loss``: with A = the map flattened to (B × CHW), G = A·Aᵀ with each
    row L2-normalised (``F.normalize``, eps 1e-12), loss = ‖G_t − G_s‖²_F / B².

    The maps need not have the same C, H or W (only the same batch). RepDistiller returns a
    1-element tensor; this returns the scalar.
    """
    b = feat_s.shape[0]
    a_s = feat_s.reshape(b, -1)
    a_t = feat_t.detach().reshape(b, -1)
    g_s = F.normalize(a_s @ a_s.t(), dim=1)
    g_t = F.normalize(a_t @ a_t.t(), dim=1)
    return (g_t - g_s).pow(2).sum() / (b * b)


@fp32
def cc(emb_s: torch.Tensor, emb_t: torch.Tensor) -> torch.Tensor:
    """Correlation congruence (Peng et al., ICCV 2019) as restructured by RepDistiller
    (``Correlation``), not the paper's Gaussian-kernel form: with Δ = |e_s − e_t| (B × d),

        loss = mean over i = 1..B−1 of Σ_d Δ[i, d]·Δ[i+1, d]   (consecutive samples).

    ``emb_t`` is **not** detached: it is the output of the trainable teacher-side embedding
    (RepDistiller puts both ``LinearEmbed``s in the optimizer), so gradients must reach that
    embedding; detach the teacher *features* before embedding them. Needs B ≥ 2.
    """
    delta = (emb_s - emb_t).abs()
    return (delta[:-1] * delta[1:]).sum(1).mean()


def _pairwise_distances(e: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """RepDistiller ``RKDLoss.pdist``: sqrt(clamp(‖a‖² + ‖b‖² − 2aᵀb, min=eps)), diagonal set to 0."""
    sq = e.pow(2).sum(dim=1)
    d = (sq.unsqueeze(1) + sq.unsqueeze(0) - 2 * (e @ e.t())).clamp(min=eps).sqrt()
    eye = torch.eye(e.shape[0], dtype=torch.bool, device=e.device)
    return d.masked_fill(eye, 0.0)


def _angles(e: torch.Tensor) -> torch.Tensor:
    """cos∠(x_b − x_a, x_c − x_a) for every anchor a and pair (b, c), flattened (B³ values);
    the difference vectors are L2-normalised with ``F.normalize`` (zero vector → 0)."""
    diff = e.unsqueeze(0) - e.unsqueeze(1)  # [a, b] = x_b − x_a
    unit = F.normalize(diff, p=2, dim=2)
    return torch.bmm(unit, unit.transpose(1, 2)).reshape(-1)


@fp32
def rkd(
    emb_s: torch.Tensor, emb_t: torch.Tensor, w_dist: float = 25.0, w_angle: float = 50.0
) -> torch.Tensor:
    """Relational KD (Park et al., CVPR 2019), RepDistiller's ``RKDLoss``: w_dist·distance + w_angle·angle.

    Distance: pairwise Euclidean distance matrices (:func:`_pairwise_distances`), each divided by
    the mean of its positive entries; Huber (smooth-L1, β = 1) mean over the B² entries.
    Angle: :func:`_angles` of both; Huber mean over the B³ entries. Inputs are flattened per
    sample; the teacher side is computed without gradient.
    """
    b = emb_s.shape[0]
    s = emb_s.reshape(b, -1)
    t = emb_t.detach().reshape(b, -1)
    with torch.no_grad():
        t_d = _pairwise_distances(t)
        t_d = t_d / t_d[t_d > 0].mean()
        t_angle = _angles(t)
    d = _pairwise_distances(s)
    d = d / d[d > 0].mean()
    loss_d = F.smooth_l1_loss(d, t_d)
    loss_a = F.smooth_l1_loss(_angles(s), t_angle)
    return w_dist * loss_d + w_angle * loss_a


def _pkt_probabilities(x: torch.Tensor, eps: float) -> torch.Tensor:
    """Rows x / (‖x‖ + eps) (NaN → 0), cosine-similarity matrix mapped to [0, 1] by (s + 1)/2,
    rows normalised to sum 1."""
    x = x / (torch.sqrt(torch.sum(x**2, dim=1, keepdim=True)) + eps)
    x = torch.where(torch.isnan(x), torch.zeros_like(x), x)
    sim = (x @ x.t() + 1.0) / 2.0
    return sim / sim.sum(dim=1, keepdim=True)


@fp32
def pkt(emb_s: torch.Tensor, emb_t: torch.Tensor) -> torch.Tensor:
    """Probabilistic knowledge transfer (Passalis & Tefas, ECCV 2018), the author's code as in
    RepDistiller's ``PKT.cosine_similarity_loss`` (eps = 1e-7):

        mean over all B² entries of p_t · log((p_t + eps) / (p_s + eps)),

    p = the row-normalised (cos + 1)/2 similarity matrix (:func:`_pkt_probabilities`). A mean,
    not a per-row KL sum — hence the benchmark's β = 30000.
    """
    eps = 1e-7
    p_s = _pkt_probabilities(emb_s, eps)
    p_t = _pkt_probabilities(emb_t.detach(), eps)
    return torch.mean(p_t * torch.log((p_t + eps) / (p_s + eps)))
