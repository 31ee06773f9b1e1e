"""The statistics against scipy and hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from engine.evaluate.stats import (
    adjust_family,
    bootstrap_ci,
    cohens_d,
    holm_bonferroni,
    mann_whitney,
    pass_hat_k,
    summarize,
    wilcoxon_paired,
)

A = [4, 5, 3, 4, 5, 4, 2, 5, 4, 3, 5, 4]
B = [3, 4, 3, 2, 4, 3, 2, 3, 4, 2, 3, 3]


def test_bootstrap_ci_matches_scipy_percentile_bootstrap():
    lo, hi = bootstrap_ci(A, n_resamples=10_000, seed=1)
    ref = sps.bootstrap((np.array(A, dtype=float),), np.mean, n_resamples=10_000, method="percentile",
                        confidence_level=0.95, random_state=np.random.default_rng(2)).confidence_interval
    # two independent Monte Carlo estimates of the same quantiles agree to within resampling noise
    assert lo == pytest.approx(ref.low, abs=0.06)
    assert hi == pytest.approx(ref.high, abs=0.06)
    assert lo < np.mean(A) < hi


def test_bootstrap_is_seeded_and_degenerate_data_gives_a_point():
    assert bootstrap_ci(A, seed=3) == bootstrap_ci(A, seed=3)
    assert bootstrap_ci([4, 4, 4]) == (4.0, 4.0)
    s = summarize([])
    assert s.n == 0 and s.mean is None and s.ci_low is None


def test_wilcoxon_paired_matches_scipy():
    res = wilcoxon_paired(A, B)
    ref = sps.wilcoxon(A, B)
    assert res.p_value == pytest.approx(ref.pvalue)
    assert res.statistic == pytest.approx(ref.statistic)
    assert res.n_a == 12 and res.mean_diff == pytest.approx(np.mean(A) - np.mean(B))


def test_wilcoxon_drops_incomplete_pairs_and_handles_no_difference():
    res = wilcoxon_paired([1.0, 2.0, None, 4.0], [1.0, 2.0, 3.0, 4.0])
    assert res.n_a == 3 and res.p_value == 1.0 and res.statistic is None


def test_mann_whitney_matches_scipy():
    res = mann_whitney(A, B[:9])
    ref = sps.mannwhitneyu(A, B[:9], alternative="two-sided")
    assert res.p_value == pytest.approx(ref.pvalue)
    assert res.statistic == pytest.approx(ref.statistic)
    assert mann_whitney([3, 3], [3, 3]).p_value == 1.0


def test_cohens_d_by_hand():
    # means 3 and 5, both sample variances 1 → pooled SD 1 → d = -2
    assert cohens_d([2, 3, 4], [4, 5, 6]) == pytest.approx(-2.0)
    a, b = np.array(A, float), np.array(B, float)
    pooled = math.sqrt(((len(a) - 1) * a.var(ddof=1) + (len(b) - 1) * b.var(ddof=1)) / (len(a) + len(b) - 2))
    assert cohens_d(A, B) == pytest.approx((a.mean() - b.mean()) / pooled)
    assert cohens_d([1, 1], [1, 1]) == 0.0


def test_holm_bonferroni_hand_computed():
    # sorted: 0.005×4=0.02, 0.01×3=0.03, 0.03×2=0.06, 0.04×1=0.04→ monotone 0.06
    adjusted, reject = holm_bonferroni([0.01, 0.04, 0.03, 0.005])
    assert adjusted == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert reject == [True, False, False, True]
    assert holm_bonferroni([0.5, 0.9])[0] == pytest.approx([1.0, 1.0])


def test_holm_agrees_with_scipy_when_available():
    p = [0.001, 0.02, 0.04, 0.3, 0.012]
    try:
        from scipy.stats import false_discovery_control  # noqa: F401
    except ImportError:
        pytest.skip("scipy has no multiple-testing helper to compare with")
    adjusted, _ = holm_bonferroni(p)
    # Holm is at least as strict as Benjamini-Hochberg and never stricter than Bonferroni
    bh = sps.false_discovery_control(p)
    assert all(h >= b - 1e-12 for h, b in zip(adjusted, bh, strict=True))
    assert all(h <= min(1.0, x * len(p)) + 1e-12 for h, x in zip(adjusted, p, strict=True))


def test_adjust_family_fills_every_test():
    fam = {"x": wilcoxon_paired(A, B), "y": wilcoxon_paired(A, A)}
    adjust_family(fam)
    assert fam["y"].p_holm == 1.0 and fam["y"].significant is False
    assert fam["x"].p_holm == pytest.approx(min(1.0, 2 * fam["x"].p_value))


def test_pass_hat_k():
    # scenario 1: 2 of 2 runs succeed, scenario 2: 1 of 2
    assert pass_hat_k([2, 1], [2, 2], 1) == pytest.approx(0.75)
    assert pass_hat_k([2, 1], [2, 2], 2) == pytest.approx(0.5)
    assert pass_hat_k([3], [4], 2) == pytest.approx(3 / 6)
    assert pass_hat_k([1], [1], 2) is None
