"""Sequential statistics for the rollout gates: pure numbers in, numbers out (no policy, no I/O).

Two families, both read only summed integer counters, so evidence from several processes adds up:

* Confidence sequences (`rate_bounds`, `rank_bounds`): mixtures of likelihood ratios, exact for
  Bernoulli counts and valid at every look by Ville's inequality. The latency gate reads its
  quantile bounds from them, and every gate's confidence interval in the decision log is one.
* Sequential probability ratio tests with an indifference zone (`difference_llr`, `paired_llr`):
  the log likelihood ratio of "the difference of two rates is the good edge" against "it is the
  bad edge". Wald's thresholds log(1/alpha) and log(beta) then bound the chance of passing a
  candidate at the bad edge (or beyond) by about alpha, and of failing one at the good edge by
  about beta, however often the loop looks. The rate of the primary is a nuisance: it is profiled
  out (maximised at each edge, as in Bartlett's SPRT), so the bounds are approximate rather than
  exact; `bench/decisions.py` measures them at the edges. An exact mixture over the nuisance would
  cost roughly half of log(n) nats of evidence, about twice the traffic.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import lru_cache

__all__ = [
    "below_half", "brownian_time", "crossing", "difference_llr", "last_int", "log_mixture", "paired_llr", "point_llr",
    "rank_bounds", "rate_bounds",
]

# Jeffreys Beta(1/2, 1/2) as the mixing distribution: it puts more weight near 0 and 1 than a
# uniform one, where error rates and accuracies live, so the sequences are tighter there.
_PRIOR = 0.5
_LOG_BETA_PRIOR = math.log(math.pi)
_TINY = 1e-12


def log_mixture(k: float, n: float) -> float:
    """log of the beta-mixture marginal likelihood of k hits in n trials."""
    a, b = _PRIOR + k, _PRIOR + n - k
    return math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b) - _LOG_BETA_PRIOR


def crossing(holds: Callable[[float], bool], lo: float, hi: float, steps: int = 45) -> float:
    """Where a predicate that holds up to some point in [lo, hi] stops holding (lo or hi at the ends)."""
    if not holds(lo):
        return lo
    if holds(hi):
        return hi
    for _ in range(steps):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if holds(mid) else (lo, mid)
    return (lo + hi) / 2


def last_int(holds: Callable[[int], bool], lo: int, hi: int) -> int:
    """The largest integer in [lo, hi] where a predicate true up to some point holds (lo - 1 if none)."""
    if not holds(lo):
        return lo - 1
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if holds(mid) else (lo, mid - 1)
    return lo


def rate_bounds(k: int, n: int, gamma: float) -> tuple[float, float]:
    """Confidence sequence for a Bernoulli rate: covers it at every n with probability >= 1 - gamma.

    The set of p whose mixture likelihood ratio is still below 1/gamma; the ratio is convex in p,
    so the set is an interval around k/n.
    """
    if n == 0:
        return 0.0, 1.0
    level, mix = -math.log(gamma), log_mixture(k, n)

    def inside(p: float) -> bool:
        return mix - k * math.log(p) - (n - k) * math.log1p(-p) < level

    tiny = 1e-15
    hat = min(max(k / n, tiny), 1 - tiny)  # the ends themselves are log(0)
    low = 0.0 if k == 0 else crossing(lambda p: not inside(p), tiny, hat)
    high = 1.0 if k == n else crossing(inside, hat, 1 - tiny)
    return low, high


# Alternatives for the rank sequences, as multiples of the tail 1 - q: a few hundred samples need
# the far ones, hundreds of thousands the near ones. An equal-weight mixture over this grid costs
# log(9) nats against knowing the right one, less than a beta mixture over all of (0, 1) costs.
_THINNER_TAILS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
_THICKER_TAILS = (1.1, 1.25, 1.5, 1.75, 2.0, 2.5, 3.0, 4.0, 6.0)


def _log_mean_exp(values: list[float]) -> float:
    top = max(values)
    return top + math.log(sum(math.exp(v - top) for v in values) / len(values))


@lru_cache(maxsize=8192)
def rank_bounds(n: int, q: float, gamma: float) -> tuple[int, int]:
    """(lo, hi): at every n, the count of samples below the true q-quantile is >= lo with
    probability >= 1 - gamma, and <= hi with probability >= 1 - gamma (each end on its own; both
    together with >= 1 - 2 gamma).

    That count is Binomial(n, q), so each end is a one-sided test of q against a mixture of
    alternatives on its side (tails thinner than 1 - q for `hi`, thicker for `lo`): the mixture of
    likelihood ratios is a martingale under q, and Ville bounds its ever reaching 1/gamma.
    """
    level, tail = -math.log(gamma), 1 - q

    def log_ratio(s: int, multiples: tuple[float, ...]) -> float:
        terms = []
        for m in multiples:
            p = 1 - tail * m
            if 0 < p < 1:
                terms.append(s * math.log(p / q) + (n - s) * math.log(tail * m / tail))
        return _log_mean_exp(terms)

    centre = min(n, round(n * q))
    hi = last_int(lambda s: log_ratio(s, _THINNER_TAILS) < level, centre, n)
    lo = n - last_int(lambda t: log_ratio(n - t, _THICKER_TAILS) < level, n - centre, n)
    return max(lo, 0), max(hi, centre)


# Alternatives for `below_half`: an equal-weight mixture over this grid costs log(9) nats against
# knowing the right one, and, unlike a two-sided mixture, spends nothing on rates above a half.
_BELOW_HALF = (0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45)


def below_half(k: int, n: int, gamma: float) -> bool:
    """Whether k hits in n show the rate below 1/2, with probability <= gamma of saying so wrongly
    at any look: a one-sided mixture of likelihood ratios against 1/2, a nonnegative
    supermartingale for every rate >= 1/2, so Ville bounds its ever reaching 1/gamma."""
    if n == 0:
        return False
    terms = [k * math.log(2 * t) + (n - k) * math.log(2 * (1 - t)) for t in _BELOW_HALF]
    return _log_mean_exp(terms) >= -math.log(gamma)


# -- two rates: the SPRT with an indifference zone ------------------------------------------------


def point_llr(k: int, n: int, good: float, bad: float) -> float:
    """log likelihood ratio of a rate `good` against a rate `bad` after k hits in n (Wald's SPRT)."""
    return k * math.log(good / bad) + (n - k) * math.log((1 - good) / (1 - bad))


def _xlogy(x: float, y: float) -> float:
    """x log y with 0 log 0 = 0 (a count of zero says nothing about its cell's probability)."""
    return 0.0 if x == 0 else x * math.log(max(y, _TINY))


def _binomial_loglik(k: int, n: int, p: float) -> float:
    return _xlogy(k, p) + _xlogy(n - k, 1 - p)


def _profile_two(kc: int, nc: int, kp: int, np_: int, theta: float) -> float:
    """max over the primary's rate p of the log likelihood with the candidate's rate p + theta.

    The log likelihood is concave in p, so a safeguarded Newton search on its derivative finds the
    maximum in a handful of steps (the exact solution is a cubic; this is simpler and as precise).
    """
    lo, hi = max(0.0, -theta), min(1.0, 1.0 - theta)

    def slope(p: float) -> tuple[float, float]:
        g = h = 0.0
        for k, m, x in ((kc, nc, p + theta), (kp, np_, p)):
            if k:
                g, h = g + k / x, h - k / (x * x)
            if m - k:
                g, h = g - (m - k) / (1 - x), h - (m - k) / ((1 - x) ** 2)
        return g, h

    eps = 1e-13
    a, b = lo + eps, hi - eps
    if slope(a)[0] <= 0:
        p = a
    elif slope(b)[0] >= 0:
        p = b
    else:
        total = nc + np_
        p = min(max((kc + kp - nc * theta) / total if total else (a + b) / 2, a), b)
        for _ in range(60):
            g, h = slope(p)
            if abs(g) < 1e-9 * (1 + total) or b - a < 1e-15:
                break
            a, b = (p, b) if g > 0 else (a, p)
            step = p - g / h if h < 0 else (a + b) / 2
            p = step if a < step < b else (a + b) / 2
    return _binomial_loglik(kc, nc, p + theta) + _binomial_loglik(kp, np_, p)


def difference_llr(kc: int, nc: int, kp: int, np_: int, good: float, bad: float) -> float:
    """log likelihood ratio of rate_c - rate_p = good against rate_c - rate_p = bad, from two
    independent binomial samples (kc of nc, kp of np_), the primary's rate profiled out at each.

    Positive values favour `good`. Between the two edges, and beyond them, the ratio is monotone
    in the observed difference, so one boundary pair decides the whole zone.
    """
    return _profile_two(kc, nc, kp, np_, good) - _profile_two(kc, nc, kp, np_, bad)


def _profile_paired(b: int, c: int, n: int, theta: float) -> float:
    """max over (p10, p01) with p10 - p01 = theta of the trinomial log likelihood of b
    candidate-only, c primary-only and n - b - c concordant pairs; the optimum is a quadratic's root."""
    r = n - b - c
    lo, hi = max(0.0, -theta), (1.0 - theta) / 2

    def loglik(t: float) -> float:
        return _xlogy(b, t + theta) + _xlogy(c, t) + _xlogy(r, 1 - 2 * t - theta)

    # d/dt = 0  <=>  2n t^2 - B t - C = 0
    big_b, big_c = (b + c) * (1 - theta) - 2 * theta * (c + r), c * theta * (1 - theta)
    disc = math.sqrt(max(big_b * big_b + 8 * n * big_c, 0.0))
    candidates = [lo, hi] + [t for t in ((big_b + disc) / (4 * n), (big_b - disc) / (4 * n)) if lo < t < hi]
    return max(loglik(t) for t in candidates)


def paired_llr(b: int, c: int, n: int, good: float, bad: float) -> float:
    """`difference_llr` for paired observations (both sides answered the same n requests).

    Only discordant pairs carry information about the difference, as in McNemar's test: b where
    only the candidate erred (or was right, for accuracy), c where only the primary did. When the
    two sides tend to fail together the discordant pairs are few and the test needs less traffic
    than two independent samples would.
    """
    if n == 0:
        return 0.0
    return _profile_paired(b, c, n, good) - _profile_paired(b, c, n, bad)


def brownian_time(x: float, upper: float, lower: float, drift: float, variance: float) -> float:
    """Expected time for a Brownian motion at x with this drift and variance per unit of time to
    leave (lower, upper): Wald's approximation of an SPRT's remaining sample size."""
    if x >= upper or x <= lower:
        return 0.0
    if variance <= 0:
        return math.inf if drift == 0 else max((upper - x) / drift, (lower - x) / drift, 0.0)
    scale = 2 * drift / variance
    if abs(scale * (upper - lower)) < 1e-6:
        return (upper - x) * (x - lower) / variance
    # P(reach upper first), written with expm1 so that large |scale| stays finite
    if scale > 0:
        p_up = -math.expm1(-scale * (x - lower)) / -math.expm1(-scale * (upper - lower))
    else:
        a, b = -scale * (x - lower), -scale * (upper - lower)  # 0 < a < b: exp(b) may overflow
        p_up = math.exp(a - b) * math.expm1(-a) / math.expm1(-b)
    return (p_up * (upper - x) + (1 - p_up) * (lower - x)) / drift
