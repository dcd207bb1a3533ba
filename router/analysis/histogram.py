"""The router's one latency bucket scheme, and fixed-bucket histograms over it.

Every latency histogram in the router (rollout windows, shadow statistics, alerts, Prometheus
export) uses `FINE` or a coarser layout derived from it: 16 bounds per octave from 1 ms to 60 s
(about 4.4% apart). `coarse(8)` is every 2nd bound of `FINE`, `coarse(4)` every 4th, and so on:
the same floats, so a finer histogram folds exactly into a coarser one, and histograms of several
router processes (or several scrapes) add bucket by bucket. Below 1 ms everything is one bucket.
"""

from __future__ import annotations

import bisect
import math
from typing import Final

# a Final alias: compiled code reads it from a C static, not a module attribute lookup per call
_bisect_left: Final = bisect.bisect_left

PER_OCTAVE: Final = 16
FINE: Final[tuple[float, ...]] = tuple(float(f"{0.001 * 2 ** (i / PER_OCTAVE):.5g}") for i in range(255))
# Final: compiled, a module global that is not is a dict lookup at every read
_LN_FIRST: Final = math.log(FINE[0])
_PER_NAT: Final = PER_OCTAVE / math.log(2)  # FINE indices per unit of natural log


def coarse(per_octave: int) -> tuple[float, ...]:
    """Every (16 / per_octave)-th bound of FINE: 8, 4, 2 or 1 bounds per octave."""
    if per_octave <= 0 or PER_OCTAVE % per_octave:
        raise ValueError(f"per_octave must divide {PER_OCTAVE}")
    return FINE[:: PER_OCTAVE // per_octave]


def layout_index(step: int, x: float) -> int:
    """`bisect.bisect_left(FINE[::step], x)` from a logarithm instead of a search: the bounds are
    a geometric series (rounded to 5 digits), so 16 x log2(x / 1 ms) lands on the right FINE index
    or next to it, and at most a step or two against the bounds themselves makes it exact. The
    per-request counters call this three times a request, where a search took nine comparisons of
    boxed floats each."""
    fine = FINE
    n = len(fine)
    if not x > fine[0]:  # also NaN, as bisect: nothing is below it
        return 0
    i = min(math.ceil(_PER_NAT * (math.log(x) - _LN_FIRST)), n) if x < math.inf else n
    while i > 0 and fine[i - 1] >= x:
        i -= 1
    while i < n and fine[i] < x:
        i += 1
    # i FINE bounds lie below x; the layout keeps every step-th of them, from the first
    return (i + step - 1) // step


BOUNDS = coarse(8)  # shadow statistics: ~9% apart, so a p99 ratio is known to within ~9%
ALERT_STEP: Final = 4  # anomaly alerts' moving baselines: every 4th bound, ~19% apart, small enough to keep per bucket
ALERT_BOUNDS = FINE[::ALERT_STEP]
# Prometheus export: powers of two from 1 ms to ~33 s (16 buckets), so dashboards stay cheap.
EXPORT_STEP: Final = 16  # one bound per octave
EXPORT_BOUNDS = FINE[::EXPORT_STEP]  # coarse(1)


class Histogram:
    """Counts of observations per bucket (the last one is +Inf), plus their sum."""

    __slots__ = ("counts", "sum", "total")

    def __init__(self) -> None:
        self.counts = [0] * (len(BOUNDS) + 1)
        self.total = 0
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[_bisect_left(BOUNDS, value)] += 1
        self.total += 1
        self.sum += value

    def merge(self, other: Histogram) -> None:
        for i, n in enumerate(other.counts):
            self.counts[i] += n
        self.total += other.total
        self.sum += other.sum

    def quantile(self, q: float) -> float | None:
        """The upper bound of the bucket holding the q-quantile (None without data)."""
        if self.total == 0:
            return None
        rank = q * self.total
        seen = 0
        for i, n in enumerate(self.counts):
            seen += n
            if seen >= rank and n:
                return BOUNDS[i] if i < len(BOUNDS) else BOUNDS[-1]
        return BOUNDS[-1]

    def to_json(self) -> dict[str, object]:
        return {"counts": {str(i): n for i, n in enumerate(self.counts) if n}, "sum": self.sum, "total": self.total}


class SignedHistogram:
    """A histogram of differences that may be negative: one histogram per sign, plus exact zeros."""

    __slots__ = ("negative", "positive", "zero")

    def __init__(self) -> None:
        self.negative = Histogram()
        self.positive = Histogram()
        self.zero = 0

    @property
    def total(self) -> int:
        return self.negative.total + self.positive.total + self.zero

    def observe(self, value: float) -> None:
        if value > 0:
            self.positive.observe(value)
        elif value < 0:
            self.negative.observe(-value)
        else:
            self.zero += 1

    def quantile(self, q: float) -> float | None:
        total = self.total
        if total == 0:
            return None
        rank = q * total
        neg = self.negative
        # negatives run from the most negative (last bucket) up to zero
        seen = 0
        for i in range(len(neg.counts) - 1, -1, -1):
            seen += neg.counts[i]
            if seen >= rank and neg.counts[i]:
                return -(BOUNDS[i - 1] if i > 0 else 0.0)
        seen += self.zero
        if seen >= rank:
            return 0.0
        for i, n in enumerate(self.positive.counts):
            seen += n
            if seen >= rank and n:
                return BOUNDS[i] if i < len(BOUNDS) else BOUNDS[-1]
        return BOUNDS[-1]


def export_buckets(hist: Histogram, bounds: tuple[float, ...] = EXPORT_BOUNDS) -> list[tuple[str, float]]:
    """A histogram's cumulative counts at coarser `bounds` (Prometheus buckets, +Inf last): the fine
    bounds fold exactly into the export's, which take every n-th of them."""
    out: list[tuple[str, float]] = []
    i = cumulative = 0
    for bound in bounds:
        while i < len(BOUNDS) and BOUNDS[i] <= bound * 1.000001:
            cumulative += hist.counts[i]
            i += 1
        out.append((repr(bound), float(cumulative)))
    out.append(("+Inf", float(hist.total)))
    return out
