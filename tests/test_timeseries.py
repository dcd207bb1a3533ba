"""The status page's 15-minute series: buckets on a fake clock, quantiles, the ring coming round, bounds."""

from __future__ import annotations

import pytest

from router.control.timeseries import BUCKET_S, LATENCY_BOUNDS, MAX_BACKENDS, SLOTS, TimeSeries, quantile


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_a_bucket_counts_requests_errors_and_latency() -> None:
    clock = Clock(1_000_003.0)
    ts = TimeSeries(clock)
    for seconds in (0.002, 0.002, 0.002, 0.040):
        ts.record("fraud", "v1", 200, seconds)
    ts.record("fraud", "v1", 503, 0.002)
    snap = ts.snapshot("fraud")
    v1 = snap["backends"]["v1"]
    assert snap["bucket_s"] == BUCKET_S and snap["slots"] == SLOTS and snap["start"] == (100_000 - SLOTS + 1) * BUCKET_S
    assert snap["elapsed"] == pytest.approx(3.0)
    # Only buckets with requests are sent: [index (the last is now), requests, errors, p50, p99].
    [(index, requests, errors, p50, p99)] = v1["points"]
    assert (index, requests, errors) == (SLOTS - 1, 5, 1)
    # 2 ms lies in the (1.41 ms, 2 ms] bucket, 40 ms in (32 ms, 45 ms]: reported at their geometric middle
    assert p50 == 0.001682 and p99 == 0.03805
    assert v1["total"] == {"requests": 5, "errors": 1, "error_rate": pytest.approx(0.2)}
    assert v1["latest"] == {"time": 100_000 * BUCKET_S, "requests": 5, "rate": 5 / BUCKET_S,
                            "error_rate": pytest.approx(0.2), "p50": p50, "p99": p99}


def test_buckets_follow_the_clock_and_the_ring_forgets_what_is_15_minutes_old() -> None:
    clock = Clock(0.0)
    ts = TimeSeries(clock)
    ts.record("r", "a", 200, 0.01)
    clock.now += BUCKET_S
    ts.record("r", "a", 200, 0.01)
    ts.record("r", "a", 200, 0.01)
    assert [p[:2] for p in ts.snapshot("r")["backends"]["a"]["points"]] == [[SLOTS - 2, 1], [SLOTS - 1, 2]]
    clock.now += (SLOTS - 1) * BUCKET_S  # the first bucket has left the window; the second is the oldest
    assert [p[:2] for p in ts.snapshot("r")["backends"]["a"]["points"]] == [[0, 2]]
    assert ts.snapshot("r")["backends"]["a"]["total"]["requests"] == 2
    ts.record("r", "a", 500, 0.01)  # takes the first bucket's row in the ring: replaced, not added to
    clock.now += BUCKET_S  # ... once the bucket is over
    b = ts.snapshot("r")["backends"]["a"]
    assert [p[:3] for p in b["points"]] == [[SLOTS - 2, 1, 1]] and b["total"]["requests"] == 1
    clock.now += SLOTS * BUCKET_S
    assert ts.snapshot("r")["backends"] == {}  # nothing in the last 15 minutes: no series shown


def test_client_gone_counts_as_a_request_without_a_latency() -> None:
    ts = TimeSeries(Clock())
    ts.record("r", "a", 499, 5.0)
    assert ts.snapshot("r")["backends"]["a"]["points"] == [[SLOTS - 1, 1, 0, None, None]]


def test_memory_is_bounded_and_fixed_when_a_series_appears() -> None:
    ts = TimeSeries(Clock())
    for i in range(MAX_BACKENDS + 5):
        ts.record("r", f"b{i}", 200, 0.01)
    ts.record("", "a", 404, 0.001)  # no route matched
    ts.record("r2", "", 502, 0.001)  # no backend chosen
    assert len(ts.routes["r"]) == MAX_BACKENDS and set(ts.routes) == {"r"}
    series = ts.routes["r"]["b0"]
    size = len(series.counts)
    for k in range(5000):
        ts.clock.now += 1.7  # type: ignore[attr-defined]
        series.record(int(ts.clock() // BUCKET_S), k % 7 == 0, 0.001 * (k % 300))
    assert len(series.counts) == size and len(series.stamps) == SLOTS
    ts.retain(["other"])
    assert ts.routes == {}


@pytest.mark.parametrize(("counts", "q", "expected"), [
    ([5] + [0] * len(LATENCY_BOUNDS), 0.5, LATENCY_BOUNDS[0]),  # all at or under 1 ms: the first bound
    ([0] * len(LATENCY_BOUNDS) + [3], 0.99, LATENCY_BOUNDS[-1]),  # all over the last bound
    ([0, 0, 10] + [0] * (len(LATENCY_BOUNDS) - 2), 0.5, LATENCY_BOUNDS[2] / 2**0.25),
    ([99, 1] + [0] * (len(LATENCY_BOUNDS) - 1), 0.99, LATENCY_BOUNDS[0]),
    ([98, 2] + [0] * (len(LATENCY_BOUNDS) - 1), 0.99, LATENCY_BOUNDS[1] / 2**0.25),
    ([0] * (len(LATENCY_BOUNDS) + 1), 0.5, None),
])
def test_quantiles_from_the_small_histogram(counts: list[int], q: float, expected: float | None) -> None:
    from array import array

    got = quantile(memoryview(array("I", counts)), q)
    assert got == (pytest.approx(expected) if expected is not None else None)
