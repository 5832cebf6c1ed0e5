"""Contrastive and representation-level losses (CRD, SRRL, SemCKD).

These are the stateless halves of three methods whose other halves live in their method modules:

* CRD (``methods/crd.py``): the method owns the embedding heads, the two memory banks, the
  negative sampling, the normalising constants Z and the bank update; :func:`crd_scores` scores
  each anchor against the other network's bank at the sampled contrast indices (positive
  first), and :func:`crd` applies the NCE loss (:func:`crd_nce`) to both sides' scores.
* SRRL (``methods/srrl.py``): the method owns the connector and applies the teacher's classifier;
  :func:`srrl` is the two MSE terms.
* SemCKD (``methods/semckd.py``): the method owns the query/key MLPs and the per-pair projectors;
  :func:`semckd_attention` turns queries and keys into the per-sample attention over teacher
  taps and :func:`semckd` is the attention-weighted per-sample MSE.

Teacher-side tensors (targets, memory banks) are detached inside, as everywhere in
``kdbench.losses``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from kdbench.losses.precision import fp32

__all__ = ["crd", "crd_nce", "crd_scores", "semckd", "semckd_attention", "srrl"]

CRD_EPS = 1e-7  # RepDistiller crd/criterion.py: added to every NCE denominator


@fp32
def crd_scores(
    anchor: torch.Tensor, bank: torch.Tensor, contrast: torch.Tensor, temperature: float
) -> torch.Tensor:
    """CRD's unnormalised scores exp(⟨bank[contrast[i, k]], anchor[i]⟩ / T), shape (B, K+1).

    ``anchor``: (B, D) embeddings; ``bank``: (N, D) memory bank of the *other* network (a
    constant: detached); ``contrast``: (B, K+1) int64 dataset indices, column 0 the positive.
    RepDistiller gathers the K+1 rows of every sample, (B, K+1, D), and multiplies; here the
    anchors meet the whole bank in one (B, N) product and the scores are gathered from it —
    the same dot products without the (B, K+1, D) copy.
    """
    dots = (anchor @ bank.detach().t()).gather(1, contrast)
    return torch.exp(dots / temperature)


@fp32
def crd_nce(scores: torch.Tensor, z: float | torch.Tensor, n_data: int) -> torch.Tensor:
    """CRD's NCE loss (Tian et al., ICLR 2020, Eq. 18; RepDistiller ``ContrastLoss``) for one anchor side.

    P = scores / Z, column 0 the positive, columns 1..m the m = K negatives; noise P_n = 1/N:
    −(1/B)·[Σ_i log(P_i0 / (P_i0 + m·P_n + ε)) + Σ_i Σ_k log(m·P_n / (P_ik + m·P_n + ε))], ε = 1e-7.
    """
    p = scores / z
    batch, m = p.shape[0], p.shape[1] - 1
    mpn = m / float(n_data)
    p_pos, p_neg = p[:, 0], p[:, 1:]
    log_d1 = torch.log(p_pos / (p_pos + (mpn + CRD_EPS)))
    log_d0 = torch.log(mpn / (p_neg + (mpn + CRD_EPS)))
    return -(log_d1.sum() + log_d0.sum()) / batch


@fp32
def crd(
    scores_s: torch.Tensor,
    scores_t: torch.Tensor,
    z_s: float | torch.Tensor,
    z_t: float | torch.Tensor,
    n_data: int,
) -> torch.Tensor:
    """CRD loss (Tian et al., ICLR 2020; RepDistiller ``CRDLoss``) of already-gathered scores.

    ``scores_s``: (B, K+1) :func:`crd_scores` of the student embedding against the *teacher*
    bank, ``scores_t`` of the teacher embedding against the *student* bank (column 0 the
    positive); ``z_s``/``z_t`` their normalising constants (the method fixes them on its first
    batch). Returns student-anchor NCE + teacher-anchor NCE.
    """
    return crd_nce(scores_s, z_s, n_data) + crd_nce(scores_t, z_t, n_data)


@fp32
def srrl(
    h_s: torch.Tensor, feat_t: torch.Tensor, pred_s: torch.Tensor, logits_t: torch.Tensor
) -> torch.Tensor:
    """SRRL (Yang et al., ICLR 2021) as in SimKD's released CIFAR code: two element-mean MSEs.

    ``h_s``: the connector's output for the student (B, C_t); ``feat_t``: the teacher's pooled
    feature (B, C_t); ``pred_s``: the teacher's (frozen) classifier applied to ``h_s``;
    ``logits_t``: the teacher's logits. Loss = MSE(h_s, f_t) + MSE(pred_s, z_t) (``nn.MSELoss()``).
    """
    return F.mse_loss(h_s, feat_t.detach()) + F.mse_loss(pred_s, logits_t.detach())


@fp32
def semckd_attention(queries: torch.Tensor, keys: torch.Tensor, soft: float = 1.0) -> torch.Tensor:
    """SemCKD's per-sample attention of every student tap over the teacher taps.

    ``queries``: (B, n_s, d) embedded student similarity rows, ``keys``: (B, n_t, d) teacher ones.
    attention[b, i, j] = softmax_j(⟨q_i[b], k_j[b]⟩ / soft); returns (B, n_s, n_t).
    """
    energy = torch.bmm(queries, keys.transpose(1, 2)) / soft
    return torch.softmax(energy, dim=-1)


@fp32
def semckd(
    projected: Sequence[Sequence[torch.Tensor]],
    targets: Sequence[Sequence[torch.Tensor]],
    attention: torch.Tensor,
) -> torch.Tensor:
    """SemCKD (Chen et al., AAAI 2021) loss as in its released code (SimKD repo ``SemCKDLoss``).

    ``projected[i][j]``: student tap i projected to teacher tap j's shape (B, C_j, H, W);
    ``targets[i][j]``: teacher tap j pooled to the same size; ``attention``: (B, n_s, n_t).
    Loss = Σ_{b,i,j} attention[b,i,j] · mean_{CHW}((P_ij(s_i) − t_j)²)[b] / (B · n_s).
    """
    batch, n_s, n_t = attention.shape
    per_sample = torch.stack(
        [
            torch.stack(
                [
                    (projected[i][j] - targets[i][j].detach()).pow(2).reshape(batch, -1).mean(dim=1)
                    for j in range(n_t)
                ],
                dim=1,
            )
            for i in range(n_s)
        ],
        dim=1,
    )  # (B, n_s, n_t)
    return (attention * per_sample).sum() / (batch * n_s)
