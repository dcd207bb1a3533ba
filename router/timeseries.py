"""The last 15 minutes of each route's traffic per backend, for the status page's charts.

Fixed 10 s buckets (aligned to the wall clock) in a ring of 90 per (route, backend): requests,
server errors and a small latency histogram each. Memory is fixed when a series first appears
(`MAX_BACKENDS` series per route at most, about 12 KiB each); recording is a few integer adds to the
current bucket, which is copied into its row of the ring when the next bucket starts. Quantiles and rates
are worked out only when a reader asks (`snapshot`).
"""

from __future__ import annotations

import math
import time
from array import array
from bisect import bisect_left
from collections.abc import Callable, Iterable
from typing import Any

from router.decision import LATENCY_BUCKETS_S

BUCKET_S = 10
SLOTS = 90  # 15 minutes
# Every 8th bound of the rollout gates' scheme (the same floats): 2 per octave from 1 ms to 46 s.
# A chart shows a trend; the shadow report and the gates keep the fine resolution.
LATENCY_BOUNDS: tuple[float, ...] = LATENCY_BUCKETS_S[::8]
_FACTOR = math.sqrt(2.0)
MAX_BACKENDS = 8  # series per route: primary, candidate, override targets; more are not charted
_REQ, _ERR, _HIST = 0, 1, 2  # layout of one bucket's row: requests, errors, histogram (+Inf last)
WIDTH = _HIST + len(LATENCY_BOUNDS) + 1
_ZERO_ROW = [0] * WIDTH


class Series:
    """One backend's ring of buckets for one route: the bucket being filled as a short list (cheap
    to add to), the finished ones as rows of a flat array, with each row's bucket number."""

    __slots__ = ("bucket", "counts", "current", "stamps")

    def __init__(self) -> None:
        self.counts = array("I", bytes(4 * SLOTS * WIDTH))
        self.stamps = array("q", [-1] * SLOTS)
        self.bucket = -1
        self.current = [0] * WIDTH

    def record(self, bucket: int, error: bool, seconds: float | None) -> None:
        if bucket != self.bucket:
            self._roll(bucket)
        current = self.current
        current[_REQ] += 1
        if error:
            current[_ERR] += 1
        if seconds is not None:
            current[_HIST + bisect_left(LATENCY_BOUNDS, seconds)] += 1

    def _roll(self, bucket: int) -> None:
        """Store the finished bucket in its row (the one of 15 minutes before is overwritten)."""
        if self.bucket >= 0:
            slot = self.bucket % SLOTS
            self.stamps[slot] = self.bucket
            self.counts[slot * WIDTH:(slot + 1) * WIDTH] = array("I", self.current)
        self.bucket = bucket
        self.current[:] = _ZERO_ROW

    def row(self, bucket: int) -> memoryview | list[int] | None:
        if bucket == self.bucket:
            return self.current
        slot = bucket % SLOTS
        if self.stamps[slot] != bucket:
            return None
        return memoryview(self.counts)[slot * WIDTH:(slot + 1) * WIDTH]


def quantile(hist: memoryview | list[int], q: float) -> float | None:
    """The q-quantile's bucket at its geometric middle (its upper bound for the first and last)."""
    n = sum(hist)
    if n == 0:
        return None
    rank, seen = max(1, math.ceil(n * q)), 0
    for j, count in enumerate(hist):
        seen += count
        if seen >= rank:
            top = LATENCY_BOUNDS[min(j, len(LATENCY_BOUNDS) - 1)]
            return top if j in (0, len(LATENCY_BOUNDS)) else top / _FACTOR
    return None  # not reached: seen ends at n >= rank


class TimeSeries:
    """Every route's series; fed by the ledger with each finished live request."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.routes: dict[str, dict[str, Series]] = {}

    def record(self, route: str, backend: str, status: int, seconds: float) -> None:
        if not route or not backend:
            return  # no route matched, or no backend was chosen: nothing to chart
        by_backend = self.routes.get(route)
        if by_backend is None:
            by_backend = self.routes[route] = {}
        series = by_backend.get(backend)
        if series is None:
            if len(by_backend) >= MAX_BACKENDS:
                return
            series = by_backend[backend] = Series()
        # 499: the client left; its duration says nothing about the backend.
        series.record(int(self.clock() // BUCKET_S), status >= 500, seconds if status != 499 else None)

    def retain(self, routes: Iterable[str]) -> None:
        """Forget the series of routes no longer configured (a reload removed them)."""
        keep = set(routes)
        for name in [n for n in self.routes if n not in keep]:
            del self.routes[name]

    def snapshot(self, route: str) -> dict[str, Any]:
        """The route's series over the last SLOTS buckets, oldest first; the last one is in progress.

        Per backend: requests, errors, rate (requests per second of the bucket), error_rate and
        p50/p99 (seconds; None for a bucket without requests), window totals and the latest bucket
        that had requests.
        """
        now = self.clock()
        current = int(now // BUCKET_S)
        first = current - SLOTS + 1
        backends = {name: _backend_json(series, first, current)
                    for name, series in sorted(self.routes.get(route, {}).items())}
        return {"bucket_s": BUCKET_S, "start": first * BUCKET_S, "elapsed": now - current * BUCKET_S,
                "backends": {name: b for name, b in backends.items() if b["total"]["requests"]}}


def _backend_json(series: Series, first: int, current: int) -> dict[str, Any]:
    requests: list[int] = []
    errors: list[int] = []
    p50: list[float | None] = []
    p99: list[float | None] = []
    latest: dict[str, Any] | None = None
    for bucket in range(first, current + 1):
        row = series.row(bucket)
        n, e = (row[_REQ], row[_ERR]) if row is not None else (0, 0)
        requests.append(n)
        errors.append(e)
        hist = row[_HIST:] if row is not None and n else None
        p50.append(quantile(hist, 0.5) if hist is not None else None)
        p99.append(quantile(hist, 0.99) if hist is not None else None)
        if n:
            latest = {"time": bucket * BUCKET_S, "requests": n, "rate": n / BUCKET_S, "error_rate": e / n,
                      "p50": p50[-1], "p99": p99[-1]}
    total, total_errors = sum(requests), sum(errors)
    return {"requests": requests, "errors": errors, "rate": [n / BUCKET_S for n in requests],
            "error_rate": [e / n if n else None for n, e in zip(requests, errors, strict=True)],
            "p50": p50, "p99": p99, "latest": latest,
            "total": {"requests": total, "errors": total_errors,
                      "error_rate": total_errors / total if total else None}}
