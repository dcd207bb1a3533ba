"""The latency gate's sequential test of the quantile ratio: an SPRT on the log of the ratio of the
two sides' sample quantiles, with standard errors read from the order statistics.

The gate asks whether the candidate's q-quantile is at most `gate` x the primary's, with an
indifference factor f: a candidate at gate x f or slower should pass with probability <= alpha,
one at gate / f or faster should fail with probability <= beta.

The log of a sample q-quantile is asymptotically normal around the true one, with a standard
error that depends on the density at the quantile. That density is not assumed: the error is read
from the histogram as the spread of the order statistics `z` standard deviations of the rank
count either side of n x q (Siddiqui's spacing estimator of the quantile density, here with z = 3:
wider spacings are steadier in a tail that holds a few dozen samples). The estimated log ratio theta is then a
Brownian motion in its information I = 1 / (se_c^2 + se_p^2), and Wald's SPRT of
theta = log(gate / f) against theta = log(gate x f) has the log likelihood ratio

    I x 2 log f x (log gate - theta)

(positive favours the good edge), compared with log(1/alpha) to pass and log(beta) to fail.

This is a normal approximation, like the profile likelihood of the error-rate SPRT: its error
rates are not exact at small n. `bench/decisions.py` measures them under continuous looks for
lognormal, heavy-tailed (Pareto) and bimodal latencies. It treats the two sides as independent:
on a shadowed step both answer the same requests, and latencies that move together make the
difference less variable than assumed, which only makes the test conservative.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from itertools import accumulate
from typing import NamedTuple

from router.analysis.rollout_types import BUCKET_FACTOR, LATENCY_BUCKETS_S

__all__ = ["SPACING_Z", "QuantileSprt", "log_quantile", "quantile_sprt"]

SPACING_Z = 3.0
# A log quantile is known to its bucket only: half a bucket is the least standard error there is
# (all of a side's samples in one bucket would otherwise claim certainty).
_MIN_SE = math.log(BUCKET_FACTOR) / 2
_LOG_BOUNDS = tuple(math.log(b) for b in LATENCY_BUCKETS_S)
_LOG_FACTOR = math.log(BUCKET_FACTOR)


class QuantileSprt(NamedTuple):
    """The test's state: the log likelihood ratio (positive favours the good edge), and the gates
    at and above which it would pass (`pass_at`) and at and below which it would fail (`fail_at`)."""

    llr: float
    pass_at: float
    fail_at: float


def _log_at_rank(cum: list[int], rank: float) -> float | None:
    """The log of the sample at a (fractional) rank: its bucket's geometric middle, None in +Inf."""
    j = bisect_left(cum, max(rank, 1.0))
    if j >= len(_LOG_BOUNDS):
        return None
    top = _LOG_BOUNDS[j]
    return top - _LOG_FACTOR / 2


def log_quantile(hist: tuple[int, ...], q: float) -> tuple[float, float] | None:
    """(log of the sample q-quantile, its standard error) from one side's histogram; None when the
    side is empty or the quantile (or the spacing above it) lies in the +Inf bucket."""
    cum = list(accumulate(hist))
    n = cum[-1] if cum else 0
    if n == 0:
        return None
    centre = n * q
    spread = SPACING_Z * math.sqrt(n * q * (1 - q))
    estimate = _log_at_rank(cum, centre)
    low = _log_at_rank(cum, centre - spread)
    high = _log_at_rank(cum, min(centre + spread, float(n)))
    if estimate is None or low is None or high is None:
        return None
    return estimate, max((high - low) / (2 * SPACING_Z), _MIN_SE)


def quantile_sprt(candidate: tuple[int, ...], primary: tuple[int, ...], q: float, gate: float, f: float,
                  alpha: float, beta: float) -> QuantileSprt | None:
    """The SPRT of the q-quantile ratio at gate / f (good) against gate x f (bad); None when either
    side's quantile cannot be read (empty, or in the +Inf bucket), or without an indifference zone
    (f = 1: no sequential test ends there; the gate keeps its confidence sequences)."""
    c, p = log_quantile(candidate, q), log_quantile(primary, q)
    width = 2 * math.log(f)
    if c is None or p is None or width <= 0:
        return None
    theta = c[0] - p[0]
    information = 1.0 / (c[1] ** 2 + p[1] ** 2)
    llr = information * width * (math.log(gate) - theta)
    # Inverted: the gates g where information x width x (log g - theta) reaches each level.
    pass_at = math.exp(theta + -math.log(alpha) / (information * width))
    fail_at = math.exp(theta + math.log(beta) / (information * width))
    return QuantileSprt(llr, pass_at, fail_at)
