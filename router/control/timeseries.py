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
from collections.abc import Callable, Iterable
from typing import Any, Final

from router.analysis.decision import LATENCY_BUCKETS_S
from router.analysis.histogram import layout_index

BUCKET_S: Final = 10
SLOTS = 90  # 15 minutes
# Every 8th bound of the rollout gates' scheme (the same floats): 2 per octave from 1 ms to 46 s.
# A chart shows a trend; the shadow report and the gates keep the fine resolution.
LATENCY_STEP: Final = 8  # every 8th bound of the router's one scheme: two per octave
LATENCY_BOUNDS: tuple[float, ...] = LATENCY_BUCKETS_S[::LATENCY_STEP]
_MIDDLE = 2 ** 0.25  # a bucket's upper bound over its geometric middle (buckets are a factor sqrt(2) wide)
MAX_BACKENDS: Final = 8  # series per route: primary, candidate, override targets; more are not charted
# layout of one bucket's row: requests, errors, histogram (+Inf last)
_REQ: Final = 0
_ERR: Final = 1
_HIST: Final = 2
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
            current[_HIST + layout_index(LATENCY_STEP, seconds)] += 1

    def _roll(self, bucket: int) -> None:
        """Store the finished bucket in its row (the one of 15 minutes before is overwritten)."""
        if self.bucket >= 0:
            slot = self.bucket % SLOTS
            self.stamps[slot] = self.bucket
            self.counts[slot * WIDTH:(slot + 1) * WIDTH] = array("I", self.current)
        self.bucket = bucket
        self.current[:] = _ZERO_ROW


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
            return top if j in (0, len(LATENCY_BOUNDS)) else top / _MIDDLE
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

        Per backend, `points`: [index in the window (0 = oldest), requests, errors, p50, p99] for
        each bucket that had requests (quantiles in seconds, to 4 significant digits; a request
        rate is requests / bucket_s); the window's totals; and the latest of those buckets.
        """
        now = self.clock()
        current = int(now // BUCKET_S)
        first = current - SLOTS + 1
        backends = {name: _backend_json(series, first, current)
                    for name, series in sorted(self.routes.get(route, {}).items())}
        return {"bucket_s": BUCKET_S, "slots": SLOTS, "start": first * BUCKET_S, "elapsed": now - current * BUCKET_S,
                "backends": {name: b for name, b in backends.items() if b["total"]["requests"]}}


def _rows(series: Series, first: int, current: int) -> list[tuple[int, memoryview | list[int]]]:
    """(index in the window, row) of the buckets within it that had requests, oldest first."""
    counts = memoryview(series.counts)
    rows: list[tuple[int, memoryview | list[int]]] = [
        (stamp - first, counts[slot * WIDTH:(slot + 1) * WIDTH])
        for slot, stamp in enumerate(series.stamps) if first <= stamp <= current]
    if first <= series.bucket <= current:
        rows.append((series.bucket - first, series.current))
    return sorted((r for r in rows if r[1][_REQ]), key=lambda r: r[0])


def _backend_json(series: Series, first: int, current: int) -> dict[str, Any]:
    points: list[list[Any]] = []
    for i, row in _rows(series, first, current):
        hist = row[_HIST:]
        points.append([i, row[_REQ], row[_ERR], _round(quantile(hist, 0.5)), _round(quantile(hist, 0.99))])
    total, total_errors = sum(p[1] for p in points), sum(p[2] for p in points)
    latest = None
    if points:
        i, n, e, p50, p99 = points[-1]
        latest = {"time": (first + i) * BUCKET_S, "requests": n, "rate": n / BUCKET_S, "error_rate": e / n,
                  "p50": p50, "p99": p99}
    return {"points": points, "latest": latest,
            "total": {"requests": total, "errors": total_errors,
                      "error_rate": total_errors / total if total else None}}


def _round(x: float | None) -> float | None:
    return None if x is None else float(f"{x:.4g}")
