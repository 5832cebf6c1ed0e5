"""Did a cell reproduce? An equivalence test (TOST) of our trials against the published number.

The difference Δ = ours − paper gets a (1 − 2α) confidence interval [lo, hi] (90 % at α = 0.05):

* the paper prints mean ± std and states its trial count (≥ 2), and we have ≥ 2 trials: Welch's
  two-sample interval, Δ ± t(1 − α, ν)·SE with SE² = s²/n + s_p²/n_p and the Welch–Satterthwaite
  ν = SE⁴ / ((s²/n)²/(n − 1) + (s_p²/n_p)²/(n_p − 1));
* otherwise (one printed number, or no trial count): a one-sample interval that takes the published
  mean as a constant, SE = s/√n, ν = n − 1.

Against the margin δ (accuracy points, ``DEFAULT_MARGIN`` unless the recipe or ``--margin`` says):

* ``reproduced``: −δ < lo and hi < δ — both one-sided tests of TOST reject "|Δ| ≥ δ" at α. A
  difference that is also significant (below) is still ``reproduced``; the detail says so;
* ``below`` / ``above``: the difference is significant (two-sided t-test of Δ = 0 at α, the
  ``p_value``) **and** the whole interval lies beyond the margin: hi < −δ (below) or lo > δ (above);
* ``inconclusive``: anything else (the interval straddles ±δ, or it lies beyond δ but the two-sided
  test is not significant). A bound exactly on ±δ counts as straddling.

An inconclusive cell says how many trials of ours would settle it (``trials_needed``): the smallest
m ≤ ``MAX_TRIALS`` at which the rule above gives another verdict, keeping Δ, our std and the paper's
side as they are (SE and ν recomputed with m). None when no such m exists: |Δ| ≈ δ, or the paper's own
SE alone keeps the interval across ±δ.

With fewer than 2 of our trials there is no spread to build an interval from: ``inconclusive``. The
trials-needed hint then assumes our spread equals the paper's printed std (when it prints one), as a
planning guess only; without a printed std it is None and the detail asks for 2 trials.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

from kdbench.errors import KdbenchError

# Accuracy points; the argument for the number is in docs/protocol-choices.md ("Trials and verdicts").
DEFAULT_MARGIN = 1.0
MAX_TRIALS = 1000  # the trials-needed search stops here


@dataclass(frozen=True)
class Verdict:
    verdict: str  # reproduced / above / below / inconclusive
    p_value: float  # two-sided test of Δ = 0 at alpha (nan: no test)
    test: str  # "Welch t", "one-sample t", or why there is no test
    margin: float  # δ
    ci_low: float  # the (1 − 2α) interval of ours − paper (nan: no interval)
    ci_high: float
    significant: bool  # p_value < alpha
    trials_needed: (
        int | None
    )  # inconclusive only: how many trials of ours would settle it (None: no n does, or unknown)
    detail: str  # one sentence for the cell


def judge(
    *,
    ours_mean: float,
    ours_std: float,
    n: int,
    paper_mean: float,
    paper_std: float,
    paper_n: int | None,
    alpha: float = 0.05,
    margin: float = DEFAULT_MARGIN,
) -> Verdict:
    """Our n trials (mean, sample std) against the published mean (± std over paper_n trials), at margin δ."""
    if not 0 < alpha < 0.5:
        raise KdbenchError(f"alpha must be in (0, 0.5) for a (1 − 2α) interval; got {alpha}.")
    if not margin > 0:
        raise KdbenchError(f"the equivalence margin must be > 0 accuracy points; got {margin}.")
    level = f"{100 * (1 - 2 * alpha):g}%"
    if math.isnan(ours_mean) or math.isnan(paper_mean):
        return _no_interval(
            "no numbers to compare", margin, None, "needs our result and a published number"
        )
    diff = ours_mean - paper_mean
    welch = paper_n is not None and paper_n >= 2 and not math.isnan(paper_std)
    paper_var = paper_std**2 / paper_n if paper_n is not None and welch else 0.0
    test = "Welch t" if welch else "one-sample t"
    if n < 2 or math.isnan(ours_std):
        if math.isnan(paper_std):
            return _no_interval(
                "needs ≥ 2 trials of ours",
                margin,
                None,
                "needs ≥ 2 trials of ours to estimate their spread",
            )
        needed = _trials_needed(
            diff, paper_std, 2, paper_var, paper_n if welch else None, alpha, margin
        )
        hint = (
            f"assuming our spread is the paper's ± {paper_std:g}, about {needed} trials of ours would settle it"
            if needed is not None
            else f"assuming our spread is the paper's ± {paper_std:g}, no number of trials "
            f"up to {MAX_TRIALS} would settle it"
        )
        return _no_interval(
            "needs ≥ 2 trials of ours", margin, needed, f"needs ≥ 2 trials of ours; {hint}"
        )
    se, df = _se_df(ours_std, n, paper_var, paper_n if welch else None)
    verdict, lo, hi, p = (x[0] for x in _classify(np.array([diff]), se, df, alpha, margin))
    verdict, p = str(verdict), float(p)
    significant = p < alpha
    interval = f"{level} CI of ours − paper [{lo:+.2f}, {hi:+.2f}]"
    needed = None
    if verdict == "reproduced":
        detail = f"{interval} inside ±{margin:g}" + (
            f"; the difference is significant (p={p:.2g}) but within the margin"
            if significant
            else ""
        )
    elif verdict in ("below", "above"):
        detail = f"{interval} beyond {'−' if verdict == 'below' else '+'}{margin:g}, p={p:.2g}"
    else:
        needed = _trials_needed(
            diff, ours_std, n + 1, paper_var, paper_n if welch else None, alpha, margin
        )
        detail = f"{interval} neither inside nor beyond ±{margin:g}; " + (
            f"about {needed} trials of ours would settle it"
            if needed is not None
            else f"no number of trials of ours up to {MAX_TRIALS} would settle it"
        )
    return Verdict(verdict, p, test, margin, float(lo), float(hi), significant, needed, detail)


def _no_interval(test: str, margin: float, needed: int | None, detail: str) -> Verdict:
    return Verdict(
        "inconclusive", math.nan, test, margin, math.nan, math.nan, False, needed, detail
    )


def _se_df(std, n, paper_var: float, paper_n: int | None):
    """SE of Δ and its degrees of freedom (Welch–Satterthwaite, or n − 1); ``std``/``n`` may be arrays."""
    ours_var = np.asarray(std, dtype=float) ** 2 / np.asarray(n, dtype=float)
    se2 = ours_var + paper_var
    if paper_n is None:
        df = np.asarray(n, dtype=float) - 1
    else:
        with np.errstate(divide="ignore", invalid="ignore"):
            df = se2**2 / (
                ours_var**2 / (np.asarray(n, dtype=float) - 1) + paper_var**2 / (paper_n - 1)
            )
    return np.sqrt(se2), df


def _classify(diff: np.ndarray, se, df, alpha: float, margin: float):
    """(verdict, lo, hi, two-sided p) per element; SE = 0 gives the point interval [Δ, Δ]."""
    se, df = np.broadcast_to(se, diff.shape), np.broadcast_to(df, diff.shape)
    zero = se == 0
    safe_df = np.where(zero, 1.0, df)
    half = np.where(zero, 0.0, stats.t.ppf(1 - alpha, safe_df) * se)
    lo, hi = diff - half, diff + half
    with np.errstate(divide="ignore", invalid="ignore"):
        p = np.where(
            zero,
            np.where(diff == 0, 1.0, 0.0),
            2 * stats.t.sf(np.abs(diff / np.where(zero, 1.0, se)), safe_df),
        )
    significant = p < alpha
    verdict = np.where(
        (lo > -margin) & (hi < margin),
        "reproduced",
        np.where(
            significant & (hi < -margin),
            "below",
            np.where(significant & (lo > margin), "above", "inconclusive"),
        ),
    )
    return verdict, lo, hi, p


def _trials_needed(
    diff: float,
    std: float,
    start: int,
    paper_var: float,
    paper_n: int | None,
    alpha: float,
    margin: float,
) -> int | None:
    """The smallest m in [start, MAX_TRIALS] whose interval settles the verdict (Δ and spreads fixed), else None."""
    if start > MAX_TRIALS:
        return None
    m = np.arange(start, MAX_TRIALS + 1)
    se, df = _se_df(np.full(m.shape, std), m, paper_var, paper_n)
    verdict, *_ = _classify(np.full(m.shape, diff), se, df, alpha, margin)
    settled = np.flatnonzero(verdict != "inconclusive")
    return int(m[settled[0]]) if len(settled) else None
