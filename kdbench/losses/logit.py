"""Logit-based distillation losses (functions of student and teacher logits)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kdbench.losses.precision import fp32

__all__ = [
    "cross_entropy",
    "kd",
    "dist",
    "dkd",
    "rld",
    "wsld",
    "ipwd",
    "ipwd_weights",
    "mlkd_instance",
    "mlkd_batch",
    "mlkd_class",
]


@fp32
def cross_entropy(
    logits: torch.Tensor, targets: torch.Tensor, label_smoothing: float = 0.0
) -> torch.Tensor:
    """Cross-entropy against integer labels, mean over the batch, with label smoothing ε (Szegedy et al., 2016)."""
    return F.cross_entropy(logits, targets, label_smoothing=label_smoothing)


@fp32
def kd(logits_s: torch.Tensor, logits_t: torch.Tensor, temperature: float) -> torch.Tensor:
    """Hinton et al. (2015) KD: T² · mean over the batch of KL(p_t ‖ p_s), p = softmax(z / T).

    KL is summed over classes and averaged over samples ("batchmean"), as in RepDistiller,
    mdistiller and SimKD's code (RepDistiller ``distiller_zoo/KD.py``, mdistiller ``mdistiller/distillers/KD.py``).
    """
    log_p_s = F.log_softmax(logits_s / temperature, dim=1)
    log_p_t = F.log_softmax(logits_t.detach() / temperature, dim=1)
    kl = F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True)
    return kl * temperature**2


def _cosine_rows(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Cosine similarity of corresponding rows; eps is added to the product of the norms."""
    return (a * b).sum(dim=1) / (a.norm(dim=1) * b.norm(dim=1) + eps)


def _pearson_rows(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Pearson correlation of corresponding rows: the cosine similarity of the centred rows."""
    return _cosine_rows(a - a.mean(dim=1, keepdim=True), b - b.mean(dim=1, keepdim=True), eps)


@fp32
def dist(
    logits_s: torch.Tensor,
    logits_t: torch.Tensor,
    beta: float = 1.0,
    gamma: float = 1.0,
    temperature: float = 1.0,
    relation: str = "pearson",
) -> torch.Tensor:
    """DIST (Huang et al., NeurIPS 2022, Eq. 8–10): τ² · (β · inter + γ · intra).

    inter = 1 − mean_i ρ(Y_s[i,:], Y_t[i,:]) (across classes of each sample);
    intra = 1 − mean_j ρ(Y_s[:,j], Y_t[:,j]) (across the samples of the local batch, per class);
    Y = softmax(z / τ). The released code's τ² factor is kept (τ = 1 reproduces the paper).
    ``relation``: ρ is the Pearson correlation (Eq. 7), or the cosine similarity (appendix A.3, Table 10).
    """
    similarity = {"pearson": _pearson_rows, "cosine": _cosine_rows}[relation]
    y_s = F.softmax(logits_s / temperature, dim=1)
    y_t = F.softmax(logits_t.detach() / temperature, dim=1)
    inter = 1.0 - similarity(y_s, y_t).mean()
    intra = 1.0 - similarity(y_s.t(), y_t.t()).mean()
    return temperature**2 * (beta * inter + gamma * intra)


# ---------------------------------------------------------------------------------------------
# Shared helpers of the decoupled losses (DKD, RLD)
# ---------------------------------------------------------------------------------------------


def _one_hot_mask(logits: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Boolean B×C mask, True at column ``index[i]`` of row i."""
    return torch.zeros_like(logits, dtype=torch.bool).scatter_(1, index.reshape(-1, 1), True)


def _binary(probs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """B×2 [p at the masked class, sum of the other C−1 probabilities] (summed, not 1 − p)."""
    return torch.stack([(probs * mask).sum(dim=1), (probs * ~mask).sum(dim=1)], dim=1)


def _binary_log(logits_over_t: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Log-space version of ``log(_binary(softmax(z), mask))``: never log(0) (the "safe" mode)."""
    log_p = F.log_softmax(logits_over_t, dim=1)
    hit = log_p.masked_fill(~mask, float("-inf")).logsumexp(dim=1)
    rest = log_p.masked_fill(mask, float("-inf")).logsumexp(dim=1)
    return torch.stack([hit, rest], dim=1)


def _batchmean_kl(log_q_s: torch.Tensor, q_t: torch.Tensor) -> torch.Tensor:
    """Σ_i Σ_c q_t (log q_t − log q_s) / B, with 0·log 0 = 0 (PyTorch ``kl_div`` semantics)."""
    return F.kl_div(log_q_s, q_t, reduction="sum") / q_t.shape[0]


def _standardize(logits: torch.Tensor) -> torch.Tensor:
    """Per-sample z-score of the logits, (z − mean) / (1e-7 + std) with Bessel's std (LSKD / RLD)."""
    mean = logits.mean(dim=-1, keepdim=True)
    std = logits.std(dim=-1, keepdim=True)
    return (logits - mean) / (1e-7 + std)


# ---------------------------------------------------------------------------------------------
# DKD
# ---------------------------------------------------------------------------------------------


@fp32
def dkd(
    logits_s: torch.Tensor,
    logits_t: torch.Tensor,
    target: torch.Tensor,
    alpha: float,
    beta: float,
    temperature: float,
) -> torch.Tensor:
    """Decoupled KD (Zhao et al., CVPR 2022, Eq. 7): α·TCKD + β·NCKD, as mdistiller's ``dkd_loss``.

    p = softmax(z / T). TCKD = T² · (1/B) Σ_i KL(b_t ‖ b_s) with the binary distribution
    b = [p_y, Σ_{c≠y} p_c]; the student's log is taken of b directly (so log(0) = −inf if p_s,y
    underflows, as in the released code). NCKD = T² · (1/B) Σ_i KL(q_t ‖ q_s), q = softmax over the
    non-target classes, implemented as the code does by subtracting 1000 from the target logit
    after dividing by T. No warm-up factor: the method applies min(epoch / warmup, 1).
    (mdistiller ``mdistiller/distillers/DKD.py``)
    """
    logits_t = logits_t.detach()
    gt = _one_hot_mask(logits_s, target)
    b_s = _binary(F.softmax(logits_s / temperature, dim=1), gt)
    b_t = _binary(F.softmax(logits_t / temperature, dim=1), gt)
    tckd = _batchmean_kl(torch.log(b_s), b_t) * temperature**2
    shift = 1000.0 * gt.to(logits_s.dtype)
    log_q_s = F.log_softmax(logits_s / temperature - shift, dim=1)
    q_t = F.softmax(logits_t / temperature - shift, dim=1)
    nckd = _batchmean_kl(log_q_s, q_t) * temperature**2
    return alpha * tckd + beta * nckd


# ---------------------------------------------------------------------------------------------
# RLD
# ---------------------------------------------------------------------------------------------


@fp32
def rld(
    logits_s: torch.Tensor,
    logits_t: torch.Tensor,
    target: torch.Tensor,
    alpha: float,
    beta: float,
    temperature: float,
    alpha_temperature: float,
    *,
    logit_stand: bool = False,
    safe: bool = False,
) -> torch.Tensor:
    """Refined Logit Distillation (Sun et al., arXiv 2408.07703): α·SCD + β·MCD, as zju-SWJ/RLD's
    ``rld_loss`` (``mdistiller/distillers/RLD.py``). No warm-up factor: the method applies it.

    SCD (at τ_a = ``alpha_temperature``): τ_a² · (1/B) Σ_i KL(b_t ‖ b_s), with the student's binary
    [p_s,y, Σ_{c≠y} p_s,c] at the **label** y and the teacher's [p_t,k, Σ_{c≠k} p_t,c] at its own
    top-1 class k = argmax z_t; the student's log is taken of the binary probabilities directly.
    MCD (at τ): mask M_ic = [z_t,ic ≥ z_t,iy] (the label itself and every class the teacher ranks at
    or above it, ties included); both z/τ are filled with −1e9 on M, then softmax / log-softmax;
    τ² · (1/B) Σ_i KL(q_t ‖ q_s). A fully masked row gives two uniform rows, i.e. 0.

    ``logit_stand``: z-score both logit matrices first (the code's ``--logit-stand``; off for the
    RLD tables). ``safe`` (not in the released code): compute SCD's binary log-probabilities in log
    space (logsumexp), so a student probability that underflows to 0 or rounds to 1 cannot give
    log(0); equal to the default mode otherwise.
    """
    logits_t = logits_t.detach()
    if logit_stand:
        logits_s, logits_t = _standardize(logits_s), _standardize(logits_t)
    gt = _one_hot_mask(logits_s, target)
    top = _one_hot_mask(logits_t, logits_t.argmax(dim=1))
    b_t = _binary(F.softmax(logits_t / alpha_temperature, dim=1), top)
    if safe:
        log_b_s = _binary_log(logits_s / alpha_temperature, gt)
    else:
        log_b_s = torch.log(_binary(F.softmax(logits_s / alpha_temperature, dim=1), gt))
    scd = _batchmean_kl(log_b_s, b_t) * alpha_temperature**2
    mask = logits_t >= logits_t.gather(1, target.reshape(-1, 1))
    log_q_s = F.log_softmax((logits_s / temperature).masked_fill(mask, -1e9), dim=1)
    q_t = F.softmax((logits_t / temperature).masked_fill(mask, -1e9), dim=1)
    mcd = _batchmean_kl(log_q_s, q_t) * temperature**2
    return alpha * scd + beta * mcd


# ---------------------------------------------------------------------------------------------
# WSLD
# ---------------------------------------------------------------------------------------------


@fp32
def wsld(
    logits_s: torch.Tensor, logits_t: torch.Tensor, target: torch.Tensor, temperature: float
) -> torch.Tensor:
    """Weighted soft labels (Zhou et al., ICLR 2021), as bellymonster/Weighted-Soft-Label-Distillation.

    T² · (1/B) Σ_i w_i · s_i with the soft cross-entropy s_i = −Σ_c p_t,ic log p_s,ic at T (a CE,
    not a KL: it includes the teacher's entropy) and the sample weight from hard-label CEs of the
    detached logits at T = 1: w_i = 1 − exp(−max(0, CE_s,i / (CE_t,i + 1e-7))). The method adds
    CE and the weight α. (WSLD's ``knowledge_distiller.py`` ``WSLDistiller``)
    """
    logits_t = logits_t.detach()
    soft = -(
        F.softmax(logits_t / temperature, dim=1) * F.log_softmax(logits_s / temperature, dim=1)
    ).sum(dim=1)
    with torch.no_grad():
        index = target.reshape(-1, 1)
        ce_s = -F.log_softmax(logits_s.detach(), dim=1).gather(1, index).squeeze(1)
        ce_t = -F.log_softmax(logits_t, dim=1).gather(1, index).squeeze(1)
        weight = 1.0 - torch.exp(-torch.clamp(ce_s / (ce_t + 1e-7), min=0.0))
    return temperature**2 * (weight * soft).mean()


# ---------------------------------------------------------------------------------------------
# IPWD (reconstructed: no released code, main-paper method section not available)
# ---------------------------------------------------------------------------------------------

IPWD_FORMS = ("mirror", "summary", "prob-ratio")
IPWD_LOGIT_NORMS = ("none", "zscore", "l2")


@fp32
def ipwd_weights(
    logits_kd: torch.Tensor,
    logits_cls: torch.Tensor,
    target: torch.Tensor,
    form: str = "mirror",
    logit_norm: str = "zscore",
    self_normalize: bool = True,
    max_weight: float | None = None,
    eps: float = 1e-7,
) -> torch.Tensor:
    """IPWD per-sample weights ŵ = 1 / P̂(machine | x), from the student's KD-trained output
    ``logits_kd`` and its CE-only extra head ``logits_cls`` (docs/references.md §IPWD; all [UNKNOWN]).

    H_kd, H_cls = −log softmax(z)_y at T = 1 of the detached (optionally normalised) logits. Forms:

    * ``"mirror"`` (default): ŵ = 1 + H_kd / (H_cls + eps) — large where the KD head fits the label
      worse than the CE-only head, i.e. it up-weights samples under-represented in the teacher's
      ("machine") domain, the paper's stated intent;
    * ``"summary"``: ŵ = 1 + H_cls / (H_kd + eps) — the form of the third-party summary (S3);
    * ``"prob-ratio"``: ŵ = 1 + p^cls_y / p^kd_y = 1 + exp(H_kd − H_cls).

    ``logit_norm``: "zscore" (default: (z − mean)/(1e-7 + std), Bessel — the "logit
    standardisation" the summary calls crucial), "l2" (z / ‖z‖₂) or "none", applied to both logit
    matrices first. ``self_normalize`` (default): divide by the batch mean of ŵ (self-normalised
    IPW, so the term keeps KD's scale; raw ratios can reach 1e2–1e6 once the CE-only head fits
    its training batch). ``max_weight``: clip ŵ from above (after self-normalisation).
    Returns a detached (B,) tensor.
    """
    if form not in IPWD_FORMS:
        raise ValueError(f"unknown IPWD weight form {form!r}; expected one of {IPWD_FORMS}")
    if logit_norm not in IPWD_LOGIT_NORMS:
        raise ValueError(
            f"unknown IPWD logit normalisation {logit_norm!r}; expected one of {IPWD_LOGIT_NORMS}"
        )
    with torch.no_grad():
        z_kd, z_cls = logits_kd.detach(), logits_cls.detach()
        if logit_norm == "zscore":
            z_kd, z_cls = _standardize(z_kd), _standardize(z_cls)
        elif logit_norm == "l2":
            z_kd, z_cls = F.normalize(z_kd, dim=1), F.normalize(z_cls, dim=1)
        index = target.reshape(-1, 1)
        h_kd = -F.log_softmax(z_kd, dim=1).gather(1, index).squeeze(1)
        h_cls = -F.log_softmax(z_cls, dim=1).gather(1, index).squeeze(1)
        if form == "mirror":
            weight = 1.0 + h_kd / (h_cls + eps)
        elif form == "summary":
            weight = 1.0 + h_cls / (h_kd + eps)
        else:
            weight = 1.0 + torch.exp(h_kd - h_cls)
        if self_normalize:
            weight = weight / weight.mean()
        if max_weight is not None:
            weight = weight.clamp(max=max_weight)
    return weight


@fp32
def ipwd(
    logits_s: torch.Tensor,
    logits_t: torch.Tensor,
    logits_cls: torch.Tensor,
    target: torch.Tensor,
    temperature: float,
    form: str = "mirror",
    logit_norm: str = "zscore",
    self_normalize: bool = True,
    max_weight: float | None = None,
    logits_kd: torch.Tensor | None = None,
) -> torch.Tensor:
    """IPWD's inverse-probability-weighted KD term (Niu et al., NeurIPS 2022; **reconstructed**).

    T² · (1/B) Σ_i ŵ_i · KL(p_t,i ‖ p_s,i), p = softmax(z / T), with ŵ from :func:`ipwd_weights`
    (detached) computed on ``logits_kd`` (default: ``logits_s``, the student's original head; IPWD†
    passes a KD-only extra head) and ``logits_cls`` (the CE-only extra head). ŵ ≡ 1 gives ``kd``.
    The extra head's own CE is not part of this term (the method returns it separately).
    """
    weight = ipwd_weights(
        logits_s if logits_kd is None else logits_kd,
        logits_cls,
        target,
        form,
        logit_norm,
        self_normalize,
        max_weight,
    )
    log_p_s = F.log_softmax(logits_s / temperature, dim=1)
    log_p_t = F.log_softmax(logits_t.detach() / temperature, dim=1)
    kl = F.kl_div(log_p_s, log_p_t, reduction="none", log_target=True).sum(dim=1)
    return temperature**2 * (weight.to(kl.dtype) * kl).mean()


# ---------------------------------------------------------------------------------------------
# MLKD's three alignment levels (one temperature each; the method sums over its temperatures)
# ---------------------------------------------------------------------------------------------


def _weighted_mean(per_item: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    """mean_i(w_i · ℓ_i): with no weights, the plain mean."""
    return per_item.mean() if weights is None else (per_item * weights).mean()


@fp32
def mlkd_instance(
    logits_s: torch.Tensor,
    logits_t: torch.Tensor,
    temperature: float,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """MLKD instance level (Jin et al., CVPR 2023): T² · (1/B) Σ_i w_i KL(p_t,i ‖ p_s,i), p = softmax(z/T)
    — with no ``weights`` the same quantity as :func:`kd` (the released ``kd_loss``, per-sample sum then
    batch mean). ``weights`` (B,) are the paper's per-sample confidence masks."""
    log_p_s = F.log_softmax(logits_s / temperature, dim=1)
    p_t = F.softmax(logits_t.detach() / temperature, dim=1)
    return (
        _weighted_mean(F.kl_div(log_p_s, p_t, reduction="none").sum(dim=1), weights)
        * temperature**2
    )


@fp32
def mlkd_batch(
    logits_s: torch.Tensor,
    logits_t: torch.Tensor,
    temperature: float,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """MLKD batch level (input correlation): ‖P_t P_tᵀ − P_s P_sᵀ‖²_F / B with P = softmax(z / T)
    (B×C, so the Gram matrices are B×B); no T² factor (MLKD ``mdistiller/distillers/KD_ours.py``; docs/references.md §MLKD).
    ``weights`` (B,) weight each sample's row of the squared difference."""
    p_s = F.softmax(logits_s / temperature, dim=1)
    p_t = F.softmax(logits_t.detach() / temperature, dim=1)
    return _weighted_mean(((p_t @ p_t.t() - p_s @ p_s.t()) ** 2).sum(dim=1), weights)


@fp32
def mlkd_class(
    logits_s: torch.Tensor,
    logits_t: torch.Tensor,
    temperature: float,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """MLKD class level (category correlation): ‖P_tᵀ P_t − P_sᵀ P_s‖²_F / C with P = softmax(z / T)
    (C×C Gram matrices); no T² factor (MLKD ``mdistiller/distillers/KD_ours.py``; docs/references.md §MLKD).
    ``weights`` (C,) weight each class's row of the squared difference."""
    p_s = F.softmax(logits_s / temperature, dim=1)
    p_t = F.softmax(logits_t.detach() / temperature, dim=1)
    return _weighted_mean(((p_t.t() @ p_t - p_s.t() @ p_s) ** 2).sum(dim=1), weights)
