"""Small exact statistics for shadow comparison and rollout gates; pure, no scipy.

- `normal_quantile`: the standard library's `statistics.NormalDist().inv_cdf` (exact to double
  precision), rather than a hand-written approximation.
- `wilson_interval`: a binomial proportion's confidence interval that stays inside [0, 1] and
  behaves at k = 0 and k = n, where the textbook Wald interval collapses to a point.
- `fisher_exact_greater`: the one-sided Fisher exact test that one proportion exceeds another.
- `classify_field`: noise cancellation for one compared field, built on the two above.
"""

from __future__ import annotations

import math
import operator
from statistics import NormalDist
from typing import Literal

import numpy as np

FieldClass = Literal["noise", "candidate", "insufficient"]


def normal_quantile(p: float) -> float:
    """The standard normal quantile: normal_quantile(0.975) ~ 1.95996."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"quantile probability must be in (0, 1), got {p!r}")
    return NormalDist().inv_cdf(p)


def _counts(k: int, n: int) -> tuple[int, int]:
    k, n = operator.index(k), operator.index(n)
    if not 0 <= k <= n:
        raise ValueError(f"counts must satisfy 0 <= k <= n, got k={k}, n={n}")
    return k, n


def wilson_interval(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Two-sided Wilson score interval for k successes in n trials.

    For a one-sided bound at level alpha, ask for confidence 1 - 2*alpha and use one end.
    With n = 0 nothing is known: (0, 1). The lower end is exactly 0 when k = 0 and positive
    otherwise; the upper end is exactly 1 when k = n.
    """
    k, n = _counts(k, n)
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    if n == 0:
        return 0.0, 1.0
    z = normal_quantile(0.5 + confidence / 2)
    p, z2 = k / n, z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z / (1 + z2 / n) * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    # Pin the ends so "lower bound > 0" means exactly "k > 0", free of rounding.
    low = 0.0 if k == 0 else max(0.0, centre - half)
    high = 1.0 if k == n else min(1.0, centre + half)
    return low, high


def fisher_exact_greater(k1: int, n1: int, k2: int, n2: int) -> float:
    """One-sided Fisher exact p-value for "the rate k1/n1 is greater than k2/n2".

    Given both margins, the number of successes in group 1 is hypergeometric under equal rates;
    the p-value is P(X >= k1). The whole distribution comes from the ratio of consecutive
    probabilities, summed in log space with numpy, so a million samples cost a few milliseconds and
    no factorial is ever formed.
    """
    k1, n1 = _counts(k1, n1)
    k2, n2 = _counts(k2, n2)
    total, hits = n1 + n2, k1 + k2
    low, high = max(0, n1 - (total - hits)), min(hits, n1)
    if k1 <= low:
        return 1.0
    x = np.arange(low, high, dtype=np.float64)
    # log P(x+1)/P(x) for the hypergeometric; every factor is >= 1 on this range, so no log(0).
    step = np.log((hits - x) * (n1 - x)) - np.log((x + 1) * (total - hits - n1 + x + 1))
    log_weight = np.concatenate(([0.0], np.cumsum(step)))
    weight = np.exp(log_weight - log_weight.max())
    return min(1.0, float(weight[k1 - low:].sum() / weight.sum()))


def classify_field(k_cand: int, n_cand: int, k_noise: int, n_noise: int, alpha: float = 0.01,
                   min_samples: int = 30) -> FieldClass:
    """Is a field's disagreement the candidate's doing, the primary's own noise, or not yet known?

    k_cand of n_cand primary-vs-candidate samples mismatched; k_noise of n_noise primary-vs-primary.

    - "candidate": the candidate mismatches significantly more often than the primary mismatches
      with itself (one-sided Fisher exact test, p < alpha).
    - "noise": the primary is shown to disagree with itself (k_noise > 0, so its rate's Wilson
      lower bound is above zero), the candidate is not significantly worse, and both groups have
      at least `min_samples` samples.
    - "insufficient": anything else, including a field that never mismatches at all.

    Why Fisher's exact test: noise samples are a few percent of mirrored traffic, so their counts
    are small and often zero, and mismatch rates sit near 0 or 1. That is where the two-proportion
    z-test's normal approximation is invalid (it is anti-conservative and undefined at k = 0),
    while Fisher's test is exact at every sample size. It is conditional on the margins and so
    slightly conservative, which errs towards not blaming the candidate.

    Why `min_samples` guards only "noise": a significant Fisher result is valid at any size, but
    "not significantly worse" from a handful of noise samples is absence of evidence, and calling
    a real regression noise would let it through a rollout gate.
    """
    k_cand, n_cand = _counts(k_cand, n_cand)
    k_noise, n_noise = _counts(k_noise, n_noise)
    if not 0.0 < alpha < 0.5:
        raise ValueError(f"alpha must be in (0, 0.5), got {alpha!r}")
    if n_cand == 0 or n_noise == 0:
        return "insufficient"
    if fisher_exact_greater(k_cand, n_cand, k_noise, n_noise) < alpha:
        return "candidate"
    # One self-mismatch proves a nonzero rate: the Wilson lower bound is positive exactly when k > 0.
    if k_noise > 0 and min(n_cand, n_noise) >= min_samples:
        return "noise"
    return "insufficient"
