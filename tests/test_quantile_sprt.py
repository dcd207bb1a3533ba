"""The latency gate's quantile SPRT: its statistic on fixed histograms, its inversion, and the
direction of its verdicts on seeded simulations (the error rates live in bench/decisions.py)."""

from __future__ import annotations

import math
from dataclasses import replace
from statistics import NormalDist

import numpy as np
import pytest

from router.analysis.decision import (
    BUCKET_FACTOR,
    LATENCY_BUCKETS_S,
    RolloutPolicy,
    SideCounts,
    StepEvidence,
    Verdict,
    error_budget,
    latency_gate,
    latency_histogram,
)
from router.analysis.quantile_sprt import log_quantile, quantile_sprt

POLICY = RolloutPolicy()
ALPHA, BETA = error_budget(POLICY)
Q, F = POLICY.gates.latency_quantile, POLICY.gates.latency_indifference


def lognormal(n: int, median_s: float, sigma: float = 0.5) -> tuple[int, ...]:
    """The n evenly spaced quantiles of a lognormal, as a histogram (deterministic)."""
    z = NormalDist().inv_cdf
    return latency_histogram(median_s * math.exp(sigma * z((i + 0.5) / n)) for i in range(n))


def test_a_point_mass_reads_its_bucket_with_half_a_bucket_of_error() -> None:
    hist = latency_histogram([0.05] * 1_000)
    estimate = log_quantile(hist, Q)
    assert estimate is not None
    log_q, se = estimate
    top = next(b for b in LATENCY_BUCKETS_S if b >= 0.05)
    assert log_q == pytest.approx(math.log(top) - math.log(BUCKET_FACTOR) / 2)
    assert se == pytest.approx(math.log(BUCKET_FACTOR) / 2)  # the floor: never certainty


def test_no_statistic_without_samples_or_past_the_last_bucket() -> None:
    assert log_quantile(latency_histogram([]), Q) is None
    beyond = latency_histogram([LATENCY_BUCKETS_S[-1] * 2] * 100 + [0.01] * 100)
    assert log_quantile(beyond, Q) is None
    assert quantile_sprt(beyond, lognormal(200, 0.05), Q, 1.25, F, ALPHA, BETA) is None


def test_the_standard_error_shrinks_as_samples_grow() -> None:
    small, large = log_quantile(lognormal(1_000, 0.05), Q), log_quantile(lognormal(16_000, 0.05), Q)
    assert small is not None and large is not None
    assert large[1] < small[1] / 2  # about 1 / sqrt(n), bucketed


@pytest.mark.parametrize(("ratio", "n", "expected"), [
    (1.0, 2_000, "pass"),  # the good edge: far above log(1/alpha)
    (2.0, 2_000, "fail"),  # beyond the bad edge
    (1.25, 600, "neither"),  # at the gate: no verdict either way yet
])
def test_verdict_directions_on_fixed_histograms(ratio: float, n: int, expected: str) -> None:
    t = quantile_sprt(lognormal(n, 0.05 * ratio), lognormal(n, 0.05), Q, 1.25, F, ALPHA, BETA)
    assert t is not None
    got = "pass" if t.llr >= -math.log(ALPHA) else "fail" if t.llr <= math.log(BETA) else "neither"
    assert got == expected, t


@pytest.mark.parametrize("ratio", [0.8, 1.0, 1.2, 1.4, 1.7, 2.5])
def test_the_inverted_bounds_are_where_the_verdict_changes(ratio: float) -> None:
    c, p = lognormal(1_500, 0.05 * ratio), lognormal(1_500, 0.05)
    t = quantile_sprt(c, p, Q, 1.25, F, ALPHA, BETA)
    assert t is not None and t.fail_at < t.pass_at

    def llr(gate: float) -> float:
        r = quantile_sprt(c, p, Q, gate, F, ALPHA, BETA)
        assert r is not None
        return r.llr

    assert llr(t.pass_at * 1.001) >= -math.log(ALPHA) > llr(t.pass_at * 0.999)
    assert llr(t.fail_at * 0.999) <= math.log(BETA) < llr(t.fail_at * 1.001)


def test_without_an_indifference_zone_the_gate_keeps_its_confidence_sequences() -> None:
    policy = replace(POLICY, gates=replace(POLICY.gates, latency_indifference=1.0))
    ev = StepEvidence(primary=SideCounts(30_000, latency=lognormal(30_000, 0.05)),
                      candidate=SideCounts(30_000, latency=lognormal(30_000, 0.05)))
    assert quantile_sprt(ev.candidate.latency, ev.primary.latency, Q, 1.25, 1.0, ALPHA, BETA) is None
    result = latency_gate(ev, policy, 1.25)
    assert result.method == "quantile confidence sequences" and result.verdict is Verdict.PASS


def _simulate(draw: str, ratio: float, seed: int, cap: int = 20_000) -> Verdict:
    """One step through the real gate, 100 samples per side per look, until a verdict or the cap."""
    rng = np.random.default_rng(seed)
    primary, candidate = [], []
    for _ in range(cap // 100):
        if draw == "pareto":  # a heavy tail: tail index 2.5
            lat = 0.05 * (1 + rng.pareto(2.5, (2, 100)))
        else:
            lat = 0.05 * np.exp(0.5 * rng.standard_normal((2, 100)))
        primary += lat[0].tolist()
        candidate += (ratio * lat[1]).tolist()
        ev = StepEvidence(primary=SideCounts(len(primary), latency=latency_histogram(primary)),
                          candidate=SideCounts(len(candidate), latency=latency_histogram(candidate)))
        verdict = latency_gate(ev, POLICY, 1.25).verdict
        if verdict is not Verdict.INCONCLUSIVE:
            return verdict
    return Verdict.INCONCLUSIVE


@pytest.mark.parametrize("draw", ["lognormal", "pareto"])
@pytest.mark.parametrize(("ratio", "expected"), [(1.0, Verdict.PASS), (1.6, Verdict.FAIL)])
def test_seeded_steps_reach_the_right_verdict(draw: str, ratio: float, expected: Verdict) -> None:
    assert [_simulate(draw, ratio, seed) for seed in range(3)] == [expected] * 3
