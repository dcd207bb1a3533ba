"""The latency gate on shadowed steps: both sides answered the same requests, so compare them pair by pair.

The gate keeps its meaning: the candidate's q-quantile against `gate` x the primary's. For a
threshold t, call a request *worse* when the candidate took longer than c x t and the primary at
most t, *better* when the reverse (c = gate x f for the pass test, gate / f for the fail test).
At t = Q_p, the primary's true q-quantile, the primary exceeds t with probability exactly 1 - q,
so P(candidate > c x Q_p) - (1 - q) = P(worse) - P(better): the candidate's quantile is below
c x Q_p exactly when worse pairs are rarer than better ones. Only discordant pairs carry that
(McNemar): among them, worse ones are Bernoulli(rho), independently, and rho < 1/2 is the claim.
When the two sides' latencies move together (request size, a shared dependency, the host), few
pairs are discordant and the test needs far less traffic than two independent quantiles.

Q_p is unknown: it lies, at every look with probability >= 1 - gamma/2, between the order
statistics the primary's rank confidence sequence gives (`rank_bounds`), and the test must reject
at every threshold in that range, so that it rejects at Q_p itself whenever Q_p is in the range.
Each threshold's rho has a confidence sequence on its own discordant pairs (`rate_bounds`, at
gamma/2): a false verdict needs Q_p outside its range or a miss at Q_p, so at most gamma in all.
Thresholds are the histogram's bounds (4.4% apart), the resolution at which the gate reads
quantiles on every step: within a bucket the test is approximate.

* pass (alpha): rho at c = gate x f is below 1/2 at every threshold in range: the candidate is
  not at the zone's bad edge or beyond.
* fail (beta): rho at c = gate / f is above 1/2 throughout: it is not at the good edge or better.
* both: the truth is inside the zone, and the estimate's side of the gate decides.
"""

from __future__ import annotations

from bisect import bisect_left
from itertools import accumulate

from router.analysis.rollout_types import LATENCY_BUCKETS_S, PairedLatency
from router.analysis.sequential import rank_bounds, rate_bounds

__all__ = ["paired_claims", "threshold_range"]


def threshold_range(hist: tuple[int, ...], q: float, gamma: float) -> range | None:
    """Indices of the thresholds between which the primary's q-quantile lies, at every n with
    probability >= 1 - gamma (None: too few samples to bound it on both sides)."""
    n = sum(hist)
    low_rank, high_rank = rank_bounds(n, q, gamma / 2)
    if low_rank < 1 or high_rank >= n:
        return None
    cum = list(accumulate(hist))
    first = max(bisect_left(cum, low_rank) - 1, 0)
    last = bisect_left(cum, high_rank + 1)
    return range(first, last + 1) if last < len(LATENCY_BUCKETS_S) else None


def _holds(worse: tuple[int, ...], better: tuple[int, ...], span: range, gamma: float, below: bool) -> bool:
    """rho (worse among discordant) is shown below 1/2 (`below`) or above it at every threshold in span."""
    for i in span:
        low, high = rate_bounds(worse[i], worse[i] + better[i], gamma)
        if (high >= 0.5) if below else (low <= 0.5):
            return False
    return True


def paired_claims(counts: PairedLatency, primary: tuple[int, ...], q: float, alpha: float,
                  beta: float) -> tuple[bool, bool]:
    """(passes, fails): the pass test at alpha (rho below 1/2 at gate x f) and the fail test at beta
    (rho above 1/2 at gate / f), each over the primary's quantile range at its own level."""
    passes = fails = False
    span = threshold_range(primary, q, alpha / 2)
    if span is not None:
        passes = _holds(counts.worse[0], counts.better[0], span, alpha / 2, below=True)
    span = threshold_range(primary, q, beta / 2)
    if span is not None:
        fails = _holds(counts.worse[1], counts.better[1], span, beta / 2, below=False)
    return passes, fails

