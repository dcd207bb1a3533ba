"""Where the two-rate SPRTs (error rate, accuracy) stop: Wald's boundaries, spending the whole beta.

Wald's fail boundary log(beta) bounds a false failure by beta for any look schedule, but it
spends less than beta in two ways, and both are recovered here:

* **Overshoot.** The log likelihood ratio falls through the fail boundary only by a jump: one more
  candidate failure (an error, a miss, a candidate-only discordant pair) moves it down by J nats,
  and it lands on average half a jump beyond the boundary. By the change of measure that gives
  Wald's bound (false fail = E_bad[exp(-LLR at the crossing)]), a crossing uniform over that jump
  spends only (1 - e^-J) / J of the bound's beta; the boundary is raised by log(J / (1 - e^-J)).
  Looks less frequent than one per sample add overshoot of their own, which only helps.
* **Where the budget is spent.** The same identity holds for any boundary that rises with time:
  false fail = E_bad[exp(-c(tau))]. A flat boundary spends beta evenly over every crossing; most
  candidates at the bad edge cross near the flat test's mean time, so a boundary that is lower
  until a little over half of them (`EARLY`) would have crossed it, and `LATE` nats higher
  afterwards, spends more of beta where it shortens the typical run (the median), and pays with a
  longer tail (the p90). Time is counted in information (the ratio's
  variance at the edges, from the counts), where the ratio at the bad edge is a Brownian motion of
  drift 1/2 and variance 1, so the crossing time is inverse Gaussian and the split is exact
  under the normal approximation.

`bench/decisions.py` measures the resulting error rates and samples under continuous looks.
"""

from __future__ import annotations

import math
from functools import lru_cache
from statistics import NormalDist

__all__ = ["EARLY", "LATE", "fail_level", "information_paired", "information_unpaired"]

LATE = 2.0  # nats: how much higher the fail boundary sits after the switch than Wald's
EARLY = 0.6  # the share of bad-edge candidates the early boundary is meant to fail before the switch
_PHI = NormalDist().cdf
_SMOOTH = 0.5  # pseudo-counts so that zero counts still give a finite variance


def _ig_cdf(x: float, mean: float, shape: float) -> float:
    """The inverse Gaussian distribution function (first passage of a Brownian motion with drift)."""
    if x <= 0:
        return 0.0
    r = math.sqrt(shape / x)
    tail = _PHI(-r * (x / mean + 1))
    return _PHI(r * (x / mean - 1)) + (math.exp(2 * shape / mean + math.log(tail)) if tail > 0 else 0.0)


@lru_cache(maxsize=1024)
def _early_level(beta: float, credit: float) -> tuple[float, float]:
    """(c1, switch): the fail boundary in nats below zero, and the information at which it moves to
    Wald's level + LATE, such that a candidate at the bad edge crosses c1 before the switch with
    probability EARLY, and the false fails before and after the switch add up to beta x credit:
    exp(-c1) EARLY + exp(-(a + LATE)) (1 - EARLY) = beta x credit, a = log(1/beta)."""
    a = -math.log(beta)
    c1 = -math.log((beta * credit - math.exp(-(a + LATE)) * (1 - EARLY)) / EARLY)
    lo, hi = 0.0, 2 * c1
    while _ig_cdf(hi, 2 * c1, c1 * c1) < EARLY:
        hi *= 2
    for _ in range(60):  # the EARLY quantile of the crossing time (inverse Gaussian), by bisection
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if _ig_cdf(mid, 2 * c1, c1 * c1) >= EARLY else (mid, hi)
    return c1, hi


def fail_level(beta: float, information: float, jump: float) -> float:
    """The log likelihood ratio (good edge over bad) at or below which the test fails.

    `information`: the ratio's variance at the edges so far (`information_*`); `jump`: how far one
    more candidate failure would move the ratio down now (nats, >= 0)."""
    j = min(max(jump, 0.0), 5.0)
    credit = j / -math.expm1(-j) if j > 1e-9 else 1.0
    c1, switch = _early_level(beta, round(credit, 3))
    return -c1 if information <= switch else math.log(beta) - LATE


def information_unpaired(kc: int, nc: int, kp: int, np_: int, width: float) -> float:
    """The SPRT's information after kc of nc and kp of np_: (good - bad)^2 / var(observed difference)."""
    if nc == 0 or np_ == 0:
        return 0.0

    def var(k: int, n: int) -> float:
        p = (k + _SMOOTH) / (n + 2 * _SMOOTH)
        return p * (1 - p) / n

    return width * width / (var(kc, nc) + var(kp, np_))


def information_paired(b: int, c: int, n: int, width: float) -> float:
    """The same for n pairs, b discordant one way and c the other (the difference's variance is
    that of b - c: only discordant pairs carry it)."""
    if n == 0:
        return 0.0
    pb, pc = (b + _SMOOTH) / (n + 1), (c + _SMOOTH) / (n + 1)
    return width * width * n / (pb + pc - (pb - pc) ** 2)
