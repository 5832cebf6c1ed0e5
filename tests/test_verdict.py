"""The cell verdict (kdbench/results/verdict.py) on hand-computed cases.

Expected t quantiles and p-values were computed apart from scipy: with mpmath (30 digits), from the
t distribution's tail P(T > t) = ½·I_{ν/(ν+t²)}(ν/2, ½) (regularised incomplete beta) and findroot.
They agree with printed t tables: t(0.95; 1) = 6.313752 (= tan(0.45π)), t(0.95; 2) = 2.919986,
t(0.95; 3) = 2.353363, t(0.90; 3) = 1.637744, t(0.95; 6) = 1.943180, t(0.95; 7) = 1.894579,
t(0.975; 1) = 12.706205.
"""

from __future__ import annotations

import math

import pytest
from kdbench.errors import KdbenchError
from kdbench.results.verdict import DEFAULT_MARGIN, judge

NAN = float("nan")


def welch(ours_mean, ours_std, n, paper_mean, paper_std, paper_n, **kw):
    return judge(
        ours_mean=ours_mean,
        ours_std=ours_std,
        n=n,
        paper_mean=paper_mean,
        paper_std=paper_std,
        paper_n=paper_n,
        **kw,
    )


def test_the_issue_example_is_not_reproduced():
    # 74.0 ± 1.5 (n=2) against 76.0 ± 0.3 (n=4): Δ = −2, SE² = 1.5²/2 + 0.3²/4 = 1.1475, SE = 1.071214;
    # ν = 1.1475² / (1.125²/1 + 0.0225²/3) = 1.040261; t(0.95; 1.040261) = 5.915107 (mpmath);
    # 90% CI = −2 ∓ 5.915107·1.071214 = [−8.336347, 4.336347]; two-sided p = 0.305606.
    v = welch(74.0, 1.5, 2, 76.0, 0.3, 4)
    assert v.verdict == "inconclusive" and v.test == "Welch t"
    assert v.ci_low == pytest.approx(-8.336347, abs=1e-5) and v.ci_high == pytest.approx(
        4.336347, abs=1e-5
    )
    assert v.p_value == pytest.approx(0.305606, abs=1e-6) and not v.significant
    # The old rule (reproduced when p ≥ α) called this reproduced; now it only says how to settle it.
    # Trials needed, Δ and both spreads kept: m = 8: SE = √(2.25/8 + 0.0225) = 0.551135, ν = 8.044666,
    # hi = −2 + t(0.95; ν)·SE = −0.975875 (> −1); m = 9: SE = 0.522015, ν = 9.303837, hi = −1.046633 (< −1)
    # and p = 0.003780 < 0.05 → below at 9.
    assert v.trials_needed == 9 and "about 9 trials of ours would settle it" in v.detail
    assert (
        welch(74.0, 1.5, 2, 76.0, 0.3, 4, margin=5.0).verdict == "inconclusive"
    )  # even a wide margin


def test_welch_interval_inside_the_margin_is_reproduced():
    # 70.2 ± 0.2 (n=4) against 70.0 ± 0.2 (n=4): SE² = 0.01 + 0.01, ν = 0.02² / (2·0.01²/3) = 6 exactly;
    # 90% CI = 0.2 ∓ 1.943180·0.141421 = 0.2 ∓ 0.274807 = [−0.074807, 0.474807]; p = 0.207031.
    v = welch(70.2, 0.2, 4, 70.0, 0.2, 4)
    assert v.verdict == "reproduced" and v.margin == DEFAULT_MARGIN == 1.0
    assert (v.ci_low, v.ci_high) == (
        pytest.approx(-0.074807, abs=1e-6),
        pytest.approx(0.474807, abs=1e-6),
    )
    assert v.p_value == pytest.approx(0.207031, abs=1e-6) and v.trials_needed is None
    # A margin below the interval's upper bound: no longer inside.
    assert welch(70.2, 0.2, 4, 70.0, 0.2, 4, margin=0.47).verdict == "inconclusive"


def test_a_significant_difference_inside_the_margin_is_still_reproduced():
    # Δ = 0.5, same SE and ν: 90% CI = [0.225193, 0.774807] ⊂ ±1; p = 0.012285 < 0.05.
    v = welch(70.5, 0.2, 4, 70.0, 0.2, 4)
    assert (
        v.verdict == "reproduced"
        and v.significant
        and v.p_value == pytest.approx(0.012285, abs=1e-6)
    )
    assert (
        v.ci_low == pytest.approx(0.225193, abs=1e-6)
        and "significant" in v.detail
        and "within the margin" in v.detail
    )


def test_above_and_below_need_the_whole_interval_beyond_the_margin():
    # Δ = +2: [1.725193, 2.274807] > 1 → above; Δ = −2 → below.
    up = welch(72.0, 0.2, 4, 70.0, 0.2, 4)
    assert up.verdict == "above" and up.ci_low == pytest.approx(1.725193, abs=1e-6)
    assert welch(68.0, 0.2, 4, 70.0, 0.2, 4).verdict == "below"
    # Δ = +1.2: [0.925193, 1.474807] straddles +1: significant, but neither inside nor beyond.
    straddles = welch(71.2, 0.2, 4, 70.0, 0.2, 4)
    assert straddles.verdict == "inconclusive" and straddles.significant


def test_one_sample_against_a_constant():
    # 71 ± 1 over n=4 against 70 (no std): SE = 0.5, ν = 3; t = 2 → p = 0.139326;
    # 90% CI = 1 ∓ 2.353363·0.5 = [−0.176682, 2.176682]: straddles +1.
    v = welch(71.0, 1.0, 4, 70.0, NAN, None)
    assert v.test == "one-sample t" and v.verdict == "inconclusive"
    assert v.p_value == pytest.approx(0.139326, abs=1e-6)
    assert (v.ci_low, v.ci_high) == (
        pytest.approx(-0.176682, abs=1e-6),
        pytest.approx(2.176682, abs=1e-6),
    )
    # |Δ| = δ exactly: hi > δ for every n, lo > δ never: no number of trials settles it.
    assert v.trials_needed is None and "no number of trials" in v.detail
    # A printed std without a trial count is still a constant (one-sample).
    assert welch(71.0, 1.0, 4, 70.0, 0.3, None).test == "one-sample t"


def test_beyond_the_margin_but_not_significant_is_inconclusive():
    # One-sample, n=4, s=1, Δ = −1.4: SE = 0.5, t = −2.8 → p = 0.067853 (≥ 0.05);
    # 90% CI = −1.4 ∓ 1.176682 = [−2.576682, −0.223318], wholly below −0.2.
    v = welch(68.6, 1.0, 4, 70.0, NAN, None, margin=0.2)
    assert v.ci_high == pytest.approx(-0.223318, abs=1e-6) and v.p_value == pytest.approx(
        0.067853, abs=1e-6
    )
    assert v.verdict == "inconclusive"
    # At α = 0.1 it is significant and the 80% CI, −1.4 ∓ 1.637744·0.5 = [−2.218872, −0.581128], is below −0.2.
    strict = welch(68.6, 1.0, 4, 70.0, NAN, None, margin=0.2, alpha=0.1)
    assert strict.verdict == "below" and strict.ci_high == pytest.approx(-0.581128, abs=1e-6)


def test_bounds_exactly_at_the_margin():
    # n=2, s=√2 → SE = 1, ν = 1; 90% CI = Δ ∓ 6.313752 (= tan(0.45π)).
    s = math.sqrt(2)
    assert welch(70.0, s, 2, 70.0, NAN, None, margin=6.31376).verdict == "reproduced"
    assert welch(70.0, s, 2, 70.0, NAN, None, margin=6.31375).verdict == "inconclusive"
    # δ = 7: below needs hi = Δ + 6.313752 < −7 (Δ < −13.313752) and |Δ| > t(0.975; 1) = 12.706205.
    assert welch(70.0 - 13.3137, s, 2, 70.0, NAN, None, margin=7.0).verdict == "inconclusive"
    assert welch(70.0 - 13.3138, s, 2, 70.0, NAN, None, margin=7.0).verdict == "below"


def test_trials_needed_by_hand():
    # One-sample, s = 1, Δ = 0.3, δ = 1: settled (reproduced) once t(0.95; m−1)/√m < 0.7.
    # m = 7: 1.943180/2.645751 = 0.7345; m = 8: 1.894579/2.828427 = 0.6698 → 8.
    v = welch(70.3, 1.0, 3, 70.0, NAN, None)
    assert v.verdict == "inconclusive" and v.trials_needed == 8 and "about 8 trials" in v.detail
    assert welch(70.3, 1.0, 8, 70.0, NAN, None).verdict == "reproduced"
    assert welch(70.3, 1.0, 7, 70.0, NAN, None).verdict == "inconclusive"
    # The paper's own SE can make it unattainable: 70 ± 0.6 over 4 gives SE ≥ 0.3 and ν → 3 as m grows,
    # so the half-width stays above 2.353363·0.3 = 0.706 > δ − Δ = 0.4: never.
    assert welch(70.6, 0.5, 2, 70.0, 0.6, 4).trials_needed is None


def test_fewer_than_two_trials():
    v = welch(70.2, NAN, 1, 70.0, NAN, None)
    assert v.verdict == "inconclusive" and v.trials_needed is None and "≥ 2 trials" in v.detail
    assert math.isnan(v.ci_low) and math.isnan(v.p_value)
    # With a printed std, the hint assumes our spread is the paper's: one-sample at s = 0.3, Δ = 0.2:
    # m = 2: 6.313752·0.3/√2 = 1.339 > 0.8; m = 3: 2.919986·0.3/√3 = 0.506 < 0.8 → 3.
    hinted = welch(70.2, NAN, 1, 70.0, 0.3, None)
    assert (
        hinted.verdict == "inconclusive"
        and hinted.trials_needed == 3
        and "paper's ± 0.3" in hinted.detail
    )


def test_zero_spread_is_a_point_interval():
    v = welch(70.0, 0.0, 3, 70.0, NAN, None)
    assert v.verdict == "reproduced" and v.ci_low == v.ci_high == 0.0 and v.p_value == 1.0
    assert welch(72.0, 0.0, 3, 70.0, 0.0, 4).verdict == "above"


def test_bad_settings_are_errors():
    with pytest.raises(KdbenchError, match="margin"):
        welch(70.0, 0.2, 4, 70.0, 0.2, 4, margin=0.0)
    with pytest.raises(KdbenchError, match="alpha"):
        welch(70.0, 0.2, 4, 70.0, 0.2, 4, alpha=0.5)
