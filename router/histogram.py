"""Fixed-bucket histograms that sum across processes and answer quantiles.

The bounds are log-spaced by 10% from 100 microseconds to about two minutes, fine enough that a
p99 ratio is known to within 10%, and fixed, so histograms from several router processes (or
several scrapes) add bucket by bucket.
"""

from __future__ import annotations

import bisect
import math

GROWTH = 1.1
BOUNDS: tuple[float, ...] = tuple(1e-4 * GROWTH**i for i in range(int(math.log(120 / 1e-4, GROWTH)) + 1))


class Histogram:
    """Counts of observations per bucket (the last one is +Inf), plus their sum."""

    __slots__ = ("counts", "sum", "total")

    def __init__(self) -> None:
        self.counts = [0] * (len(BOUNDS) + 1)
        self.total = 0
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(BOUNDS, value)] += 1
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

# The bounds the request-latency histograms are exported with (Prometheus' usual layout, seconds).
EXPORT_BOUNDS: tuple[float, ...] = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                                    30.0, 60.0)
