"""Did a cell reproduce? A stated statistical test of our trials against the published number.

* Published mean ± std with a known trial count, and at least 2 of our trials: Welch's two-sample
  t-test (unequal variances) on the two means.
* Published number without a std or without a trial count, and at least 2 of our trials: a
  one-sample t-test of our trials against the published mean, taken as a constant.
* Fewer than 2 of our trials: ``inconclusive`` (no variance to test with).

At level ``alpha`` (default 0.05): ``reproduced`` when the difference is not significant, else
``above`` or ``below`` the published number.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from scipy import stats

VERDICTS = ("reproduced", "above", "below", "inconclusive")


@dataclass(frozen=True)
class Verdict:
    verdict: str
    p_value: float
    test: str


def judge(ours_mean: float, ours_std: float, n: int, paper_mean: float, paper_std: float,
          paper_n: int | None, alpha: float = 0.05) -> Verdict:
    """Compare our n trials (mean, sample std) with the published mean (± std over paper_n trials)."""
    if n < 2 or math.isnan(ours_mean) or math.isnan(paper_mean):
        return Verdict("inconclusive", float("nan"), "needs ≥ 2 trials of ours")
    if not math.isnan(paper_std) and paper_n is not None and paper_n >= 2:
        p = _welch(ours_mean, ours_std, n, paper_mean, paper_std, paper_n)
        test = "Welch t"
    else:
        p = _one_sample(ours_mean, ours_std, n, paper_mean)
        test = "one-sample t"
    if p >= alpha:
        return Verdict("reproduced", p, test)
    return Verdict("above" if ours_mean > paper_mean else "below", p, test)


def _welch(m1: float, s1: float, n1: int, m2: float, s2: float, n2: int) -> float:
    if s1 == 0 and s2 == 0:
        return 1.0 if m1 == m2 else 0.0
    return float(stats.ttest_ind_from_stats(m1, s1, n1, m2, s2, n2, equal_var=False).pvalue)


def _one_sample(mean: float, std: float, n: int, value: float) -> float:
    if std == 0:
        return 1.0 if mean == value else 0.0
    t = (mean - value) / (std / math.sqrt(n))
    return float(2 * stats.t.sf(abs(t), df=n - 1))
