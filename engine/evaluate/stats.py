"""The paper's statistics: bootstrap CIs, paired and unpaired tests, effect size, Holm-Bonferroni.

- Bootstrap 95% CI of a mean: 10,000 resamples, percentile method, seeded (reports are reproducible).
- Paired runs (the same scenarios, matched by scenario index): Wilcoxon signed-rank, two-sided.
- Unpaired runs (different runs or scenario sets): Mann-Whitney U, two-sided.
- Cohen's d with the pooled standard deviation (the conventional, unpaired definition, so paired and
  unpaired comparisons report the same kind of effect size).
- Holm-Bonferroni step-down adjustment over a family of tests (the five criteria), alpha 0.05.

Degenerate inputs (no data, every difference zero, zero variance) give p = 1 / d = 0 instead of NaN:
a report should say "no difference", not crash or print "nan".
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from scipy import stats as sps

Values = Sequence[float | None] | np.ndarray  # None / NaN entries are dropped
N_RESAMPLES = 10_000
CONFIDENCE = 0.95
ALPHA = 0.05


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Summary(_Model):
    n: int = Field(description="Number of observations.")
    mean: float | None = Field(description="Mean, None when there is no data.")
    sd: float | None = Field(description="Sample standard deviation (ddof=1), None below two observations.")
    ci_low: float | None = Field(description="Lower bound of the bootstrap percentile CI of the mean.")
    ci_high: float | None = Field(description="Upper bound of the bootstrap percentile CI of the mean.")


class TestResult(_Model):
    test: str = Field(description="wilcoxon (paired) or mann-whitney (unpaired).")
    n_a: int = Field(description="Observations of the first group (pairs for the paired test).")
    n_b: int = Field(description="Observations of the second group.")
    statistic: float | None = Field(description="The test statistic as scipy reports it.")
    p_value: float = Field(description="Two-sided p-value (1.0 when the test is undefined).")
    cohens_d: float = Field(description="Effect size: mean(a) - mean(b) over the pooled standard deviation.")
    mean_diff: float | None = Field(description="mean(a) - mean(b).")
    p_holm: float | None = Field(None, description="Holm-Bonferroni adjusted p-value within its family.")
    significant: bool | None = Field(None, description="p_holm < alpha, when adjusted.")


def summarize(values: Values, n_resamples: int = N_RESAMPLES, seed: int = 0) -> Summary:
    x = _clean(values)
    if x.size == 0:
        return Summary(n=0, mean=None, sd=None, ci_low=None, ci_high=None)
    lo, hi = bootstrap_ci(x, n_resamples=n_resamples, seed=seed)
    sd = float(np.std(x, ddof=1)) if x.size > 1 else None
    return Summary(n=int(x.size), mean=float(x.mean()), sd=sd, ci_low=lo, ci_high=hi)


def bootstrap_ci(
    values: Values, n_resamples: int = N_RESAMPLES, confidence: float = CONFIDENCE, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean: resample with replacement, take the alpha/2 quantiles."""
    x = _clean(values)
    if x.size == 0:
        raise ValueError("bootstrap_ci needs at least one value")
    rng = np.random.default_rng(seed)
    # draw in chunks so 10,000 resamples of a long series never allocate one huge matrix
    means = np.empty(n_resamples)
    chunk = max(1, 2_000_000 // x.size)
    for start in range(0, n_resamples, chunk):
        k = min(chunk, n_resamples - start)
        idx = rng.integers(0, x.size, size=(k, x.size))
        means[start : start + k] = x[idx].mean(axis=1)
    tail = (1 - confidence) / 2 * 100
    lo, hi = np.percentile(means, [tail, 100 - tail])
    return float(lo), float(hi)


def wilcoxon_paired(a: Values, b: Values) -> TestResult:
    """Wilcoxon signed-rank test on pairs (a[i], b[i]); pairs with a missing side are dropped."""
    pairs = [(x, y) for x, y in zip(a, b, strict=True) if _ok(x) and _ok(y)]
    xa = np.array([p[0] for p in pairs], dtype=float)
    xb = np.array([p[1] for p in pairs], dtype=float)
    stat: float | None = None
    p = 1.0
    if xa.size and np.any(xa != xb):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # scipy warns about ties/small n; the p-value is still right
            res = sps.wilcoxon(xa, xb, alternative="two-sided")
        stat, p = float(res.statistic), _p(res.pvalue)
    return TestResult(test="wilcoxon", n_a=int(xa.size), n_b=int(xb.size), statistic=stat, p_value=p,
                      cohens_d=cohens_d(xa, xb), mean_diff=_mean_diff(xa, xb))


def mann_whitney(a: Values, b: Values) -> TestResult:
    """Mann-Whitney U test between two independent samples (two-sided)."""
    xa, xb = _clean(a), _clean(b)
    stat: float | None = None
    p = 1.0
    if xa.size and xb.size and not (np.all(xa == xa[0]) and np.all(xb == xa[0])):
        res = sps.mannwhitneyu(xa, xb, alternative="two-sided")
        stat, p = float(res.statistic), _p(res.pvalue)
    return TestResult(test="mann-whitney", n_a=int(xa.size), n_b=int(xb.size), statistic=stat, p_value=p,
                      cohens_d=cohens_d(xa, xb), mean_diff=_mean_diff(xa, xb))


def cohens_d(a: Values, b: Values) -> float:
    """(mean a - mean b) / pooled SD, pooled = sqrt(((na-1) sa^2 + (nb-1) sb^2) / (na + nb - 2))."""
    xa, xb = _clean(a), _clean(b)
    if xa.size < 2 or xb.size < 2:
        return 0.0
    va, vb = np.var(xa, ddof=1), np.var(xb, ddof=1)
    pooled = math.sqrt(((xa.size - 1) * va + (xb.size - 1) * vb) / (xa.size + xb.size - 2))
    if pooled == 0:
        return 0.0
    return float((xa.mean() - xb.mean()) / pooled)


def holm_bonferroni(p_values: Sequence[float], alpha: float = ALPHA) -> tuple[list[float], list[bool]]:
    """Holm's step-down adjustment: returns (adjusted p-values, reject?) in the input order.

    Sort ascending; the i-th smallest (0-based) gets (m - i) * p, made monotone non-decreasing and
    capped at 1. A hypothesis is rejected when its adjusted p is below alpha.
    """
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    adjusted = [1.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted, [p < alpha for p in adjusted]


def adjust_family(results: dict[str, TestResult], alpha: float = ALPHA) -> None:
    """Fill p_holm / significant on a family of tests (e.g. one per criterion), in place."""
    keys = list(results)
    adjusted, reject = holm_bonferroni([results[k].p_value for k in keys], alpha)
    for k, p, r in zip(keys, adjusted, reject, strict=True):
        results[k].p_holm, results[k].significant = p, r


def pass_hat_k(successes: Sequence[int], trials: Sequence[int], k: int) -> float | None:
    """pass^k (tau-bench): the chance that k runs of the same scenario ALL succeed, averaged over
    scenarios, estimated without bias as C(c, k) / C(n, k) per scenario with c successes of n runs."""
    vals = [math.comb(c, k) / math.comb(n, k) for c, n in zip(successes, trials, strict=True) if n >= k]
    return float(np.mean(vals)) if vals else None


# ----------------------------------------------------------------------------------------------


def _ok(v: float | None) -> bool:
    return v is not None and not (isinstance(v, float) and math.isnan(v))


def _clean(values: Values) -> np.ndarray:
    return np.array([v for v in values if _ok(v)], dtype=float)


def _mean_diff(xa: np.ndarray, xb: np.ndarray) -> float | None:
    return float(xa.mean() - xb.mean()) if xa.size and xb.size else None


def _p(p: float) -> float:
    return 1.0 if p is None or math.isnan(p) else float(p)
