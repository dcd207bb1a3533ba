"""The sequential gates with indifference zones: their statistics, verdicts on fixed counts, the
direction of their verdicts in small seeded simulations, and the expected samples to a verdict."""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable

import numpy as np
import pytest

from router.analysis.decision import (
    Gate,
    Gates,
    Phase,
    RolloutPolicy,
    RolloutState,
    SideCounts,
    Snapshot,
    StepEvidence,
    Verdict,
    accuracy_gate,
    error_budget,
    error_rate_gate,
    latency_gate,
    latency_histogram,
)
from router.analysis.expectation import expected_samples, expected_seconds, gate_expectations
from router.analysis.gates import sprt_verdict
from router.analysis.sequential import brownian_time, difference_llr, paired_llr
from router.config import ConfigError, parse_config
from router.control.window import WindowCounters
from tests.test_decision import lognormal

POLICY = RolloutPolicy()
WITH_ACCURACY = RolloutPolicy(gates=Gates(min_accuracy_delta=-0.01))
INC, PASS, FAIL = Verdict.INCONCLUSIVE, Verdict.PASS, Verdict.FAIL


def loglik(kc: int, nc: int, kp: int, np_: int, pc: float, pp: float) -> float:
    return float(kc * np.log(pc) + (nc - kc) * np.log1p(-pc) + kp * np.log(pp) + (np_ - kp) * np.log1p(-pp))


# -- statistics ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("kc", "nc", "kp", "np_"), [(20, 2000, 20, 2000), (45, 2000, 18, 3000), (3, 500, 90, 9000),
                                                      (900, 1000, 850, 1000)])
def test_the_profiled_ratio_matches_a_brute_force_maximum(kc: int, nc: int, kp: int, np_: int) -> None:
    grid = np.linspace(1e-6, 1 - 0.02 - 1e-6, 200_001)

    def profile(theta: float) -> float:
        ll = kc * np.log(grid + theta) + (nc - kc) * np.log1p(-grid - theta) + kp * np.log(grid) \
            + (np_ - kp) * np.log1p(-grid)
        return float(ll.max())

    assert difference_llr(kc, nc, kp, np_, 0.0, 0.01) == pytest.approx(profile(0.0) - profile(0.01), abs=1e-3)


def test_the_ratio_favours_the_edge_nearer_the_observed_difference() -> None:
    assert difference_llr(20, 2000, 20, 2000, 0.0, 0.01) > 0  # observed 0: the good edge
    assert difference_llr(40, 2000, 20, 2000, 0.0, 0.01) < 0  # observed +0.01: the bad edge
    assert difference_llr(30, 2000, 20, 2000, 0.0, 0.01) == pytest.approx(0, abs=0.1)  # halfway
    # More of the same evidence moves the ratio further the same way.
    assert difference_llr(40, 4000, 40, 4000, 0.0, 0.01) > difference_llr(20, 2000, 20, 2000, 0.0, 0.01)


def test_paired_ratio_reads_only_the_discordant_pairs() -> None:
    assert paired_llr(0, 0, 0, 0.0, 0.01) == 0.0
    assert paired_llr(10, 10, 2000, 0.0, 0.01) > 0 > paired_llr(30, 10, 2000, 0.0, 0.01)
    # With the errors shared by both sides (few discordant pairs), 2,000 pairs at equal rates say
    # more than two independent samples of 2,000 with the same 20 errors each.
    assert paired_llr(2, 2, 2000, 0.0, 0.01) > difference_llr(20, 2000, 20, 2000, 0.0, 0.01)


@pytest.mark.parametrize(("x", "drift", "variance", "expected"), [
    (0.0, 0.0, 1.0, 4 * 6),  # no drift: (upper - x)(x - lower) / variance
    (0.0, 1.0, 0.0, 4.0),  # no noise: distance over drift
    (0.0, -1.0, 0.0, 6.0),
    (5.0, 1.0, 1.0, 0.0),  # already past a threshold
])
def test_brownian_time(x: float, drift: float, variance: float, expected: float) -> None:
    assert brownian_time(x, 4.0, -6.0, drift, variance) == pytest.approx(expected, rel=1e-6)


def test_brownian_time_with_drift_lies_between_the_extremes() -> None:
    slow = brownian_time(0.0, 4.0, -6.0, 0.0, 1.0)
    assert 4.0 < brownian_time(0.0, 4.0, -6.0, 0.5, 1.0) < slow
    assert math.isfinite(brownian_time(0.0, 4.0, -6.0, -50.0, 0.01))  # no overflow on a steep drift


# -- verdicts on fixed counts --------------------------------------------------------------------


def paired(n: int, only_candidate: int, only_primary: int, both: int = 0) -> StepEvidence:
    return StepEvidence(primary=SideCounts(n, only_primary + both), candidate=SideCounts(n, only_candidate + both),
                        pairs=n, discordant_candidate=only_candidate, discordant_primary=only_primary)


@pytest.mark.parametrize(("evidence", "verdict"), [
    (paired(400, 0, 0), INC),  # below min_samples
    (paired(3000, 0, 0, both=30), PASS),  # 1% errors, always together: nothing tells them apart
    (paired(2000, 20, 20), INC),  # the same marginal counts, but independent: too little yet
    (paired(5000, 50, 50), PASS),
    (paired(5000, 100, 20), FAIL),  # +1.6 points
    (paired(1000, 60, 0), FAIL),
])
def test_paired_error_rate_gate(evidence: StepEvidence, verdict: Verdict) -> None:
    result = error_rate_gate(evidence, POLICY, 0.005)
    assert (result.verdict, result.paired, result.n) == (verdict, True, evidence.pairs)
    assert result.ci_low is not None and result.ci_high is not None and result.ci_low <= result.ci_high
    if verdict is PASS:
        assert result.high is not None and result.high <= 0.005
    if verdict is FAIL:
        assert result.low is not None and result.low > 0.005


def test_pairing_needs_every_request_counted_as_a_pair() -> None:
    live = StepEvidence(primary=SideCounts(3000, 30), candidate=SideCounts(3000, 30))
    assert not live.paired and not error_rate_gate(live, POLICY, 0.005).paired
    assert not dataclasses.replace(paired(3000, 0, 0, 30), pairs=2999, discordant_candidate=0).paired
    assert paired(3000, 0, 0, 30).paired


@pytest.mark.parametrize(("candidate", "primary", "verdict"), [
    ((0, 0), (0, 0), INC),
    ((300, 300), (300, 300), INC),  # below min_samples
    ((20_000, 18_000), (20_000, 18_000), PASS),  # 90% both
    ((5_000, 4_000), (5_000, 4_500), FAIL),  # 80% against 90%
    ((2_000, 1_780), (2_000, 1_800), INC),  # one point below: at the gate
    ((20_000, 17_800), (20_000, 18_300), FAIL),  # 2.5 points below, beyond the zone's bad edge
])
def test_accuracy_gate(candidate: tuple[int, int], primary: tuple[int, int], verdict: Verdict) -> None:
    ev = StepEvidence(candidate=SideCounts(labelled=candidate[0], correct=candidate[1]),
                      primary=SideCounts(labelled=primary[0], correct=primary[1]))
    result = accuracy_gate(ev, WITH_ACCURACY, -0.01)
    assert (result.verdict, result.zone) == (verdict, (-0.02, 0.0))
    if verdict is PASS:
        assert result.low is not None and result.low >= -0.01
    if verdict is FAIL:
        assert result.high is not None and result.high < -0.01


@pytest.mark.parametrize(("ratio", "n", "verdict"), [
    (1.0, 5_000, PASS),
    (1.3, 3_000, INC),  # inside the zone, not yet clear of either edge
    (1.2, 200_000, PASS),  # inside the zone and both tests reject: the estimate's side of the gate decides
    (1.35, 200_000, FAIL),
    (1.7, 5_000, FAIL),
])
def test_latency_gate_with_an_indifference_factor(ratio: float, n: int, verdict: Verdict) -> None:
    ev = StepEvidence(candidate=SideCounts(n, latency=lognormal(n, 0.05 * ratio)),
                      primary=SideCounts(n, latency=lognormal(n, 0.05)))
    result = latency_gate(ev, POLICY, 1.25)
    assert result.verdict is verdict, result
    assert result.zone == pytest.approx((1.0, 1.5625))
    assert result.ci_low is not None and result.ci_high is not None
    assert result.ci_low <= ratio * 1.05 and ratio / 1.05 <= result.ci_high


def test_no_indifference_is_the_plain_confidence_sequence_test() -> None:
    strict = RolloutPolicy(gates=Gates(latency_indifference=1.0))
    ev = StepEvidence(candidate=SideCounts(3_000, latency=lognormal(3_000, 0.05)),
                      primary=SideCounts(3_000, latency=lognormal(3_000, 0.05)))
    assert latency_gate(ev, strict, 1.25).verdict is INC
    assert latency_gate(ev, POLICY, 1.25).verdict is PASS


@pytest.mark.parametrize("evidence", [
    StepEvidence(candidate=SideCounts(3_000, 31), primary=SideCounts(3_000, 30)),
    StepEvidence(candidate=SideCounts(6_000, 125), primary=SideCounts(6_000, 60)),
    StepEvidence(candidate=SideCounts(800, 8), primary=SideCounts(9_000, 100)),
])
def test_error_verdict_is_the_ratio_against_walds_thresholds(evidence: StepEvidence) -> None:
    """bench/decisions.py judges by the ratio directly; it must be what the gate does."""
    c, p = evidence.candidate, evidence.primary
    alpha, beta = error_budget(POLICY)
    llr, level = sprt_verdict(False, (c.errors, c.requests, p.errors, p.requests),
                              (c.errors + 1, c.requests + 1, p.errors, p.requests), 0.0, 0.01, alpha, beta)
    assert llr == difference_llr(c.errors, c.requests, p.errors, p.requests, 0.0, 0.01)
    expected = FAIL if llr <= level else PASS if llr >= -math.log(alpha) else INC
    assert error_rate_gate(evidence, POLICY, 0.005).verdict is expected


def test_the_log_names_test_boundaries_and_the_interval_apart() -> None:
    result = error_rate_gate(StepEvidence(candidate=SideCounts(3_000, 31), primary=SideCounts(3_000, 30)),
                             POLICY, 0.005)
    text, entry = str(result), result.to_json()
    assert "0.99 confidence interval [" in text and "test boundaries [" in text and "n=3000" in text
    assert entry["bounds"] == "sequential test boundaries" and entry["ci_confidence"] == 0.99
    assert entry["zone"] == [0.0, 0.01] and entry["ci_low"] == result.ci_low


@pytest.mark.parametrize("make", [
    lambda: Gates(error_indifference=0.0),
    lambda: Gates(max_error_rate_increase=0.5, error_indifference=0.6),
    lambda: Gates(min_accuracy_delta=-0.5, accuracy_indifference=0.6),
    lambda: Gates(latency_indifference=0.9),
])
def test_invalid_zones_are_rejected(make: Callable[[], object]) -> None:
    with pytest.raises(ValueError, match="indifference"):
        make()


def test_default_zones_scale_with_the_gate() -> None:
    assert Gates().error_margin == 0.005 and Gates(max_error_rate_increase=0.05).error_margin == 0.05
    assert Gates(max_error_rate_increase=0.0).error_margin == 0.005  # a gate of 0 still needs a zone
    assert Gates(min_accuracy_delta=-0.02).accuracy_margin == 0.02
    assert Gates(max_error_rate_increase=0.05, error_indifference=0.01).error_margin == 0.01


def test_pair_counters_sum_across_processes() -> None:
    a, b = paired(300, 3, 2, 1), paired(500, 4, 1, 0)
    merged = a + b
    assert (merged.pairs, merged.discordant_candidate, merged.discordant_primary) == (800, 7, 3)
    assert merged.paired
    with pytest.raises(ValueError):
        StepEvidence(pairs=5, discordant_candidate=4, discordant_primary=2)


# -- seeded simulations: the direction of every verdict -------------------------------------------


def simulate(judge: Callable[[int], Verdict], cap: int, batch: int) -> tuple[Verdict, int]:
    for n in range(batch, cap + 1, batch):
        verdict = judge(n)
        if verdict is not INC:
            return verdict, n
    return INC, cap


def error_run(pc: float, pp: float, rng: np.random.Generator, pairs: bool) -> Verdict:
    both = rng.random((20_000, 2)) < (pc, pp)

    def judge(n: int) -> Verdict:
        c, p = both[:n, 0], both[:n, 1]
        ev = paired(n, int((c & ~p).sum()), int((p & ~c).sum()), int((c & p).sum())) if pairs else \
            StepEvidence(candidate=SideCounts(n, int(c.sum())), primary=SideCounts(n, int(p.sum())))
        return error_rate_gate(ev, POLICY, 0.005).verdict
    return simulate(judge, 20_000, 250)[0]


@pytest.mark.parametrize("pairs", [False, True])
@pytest.mark.parametrize(("pc", "expected"), [(0.01, PASS), (0.03, FAIL)])
def test_error_rate_verdicts_point_the_right_way(pc: float, expected: Verdict, pairs: bool) -> None:
    rng = np.random.default_rng(19)
    assert [error_run(pc, 0.01, rng, pairs) for _ in range(10)] == [expected] * 10


@pytest.mark.parametrize(("pc", "expected"), [(0.9, PASS), (0.86, FAIL)])
def test_accuracy_verdicts_point_the_right_way(pc: float, expected: Verdict) -> None:
    rng = np.random.default_rng(23)
    for _ in range(10):
        right = rng.random((40_000, 2)) < (pc, 0.9)

        def judge(n: int, right: np.ndarray = right) -> Verdict:
            ev = StepEvidence(candidate=SideCounts(labelled=n, correct=int(right[:n, 0].sum())),
                              primary=SideCounts(labelled=n, correct=int(right[:n, 1].sum())))
            return accuracy_gate(ev, WITH_ACCURACY, -0.01).verdict
        assert simulate(judge, 40_000, 1_000)[0] is expected


@pytest.mark.parametrize(("ratio", "expected"), [(1.0, PASS), (1.8, FAIL)])
def test_latency_verdicts_point_the_right_way(ratio: float, expected: Verdict) -> None:
    rng = np.random.default_rng(29)
    for _ in range(5):
        lat = 0.05 * np.exp(0.5 * rng.standard_normal((2, 10_000)))

        def judge(n: int, lat: np.ndarray = lat) -> Verdict:
            ev = StepEvidence(candidate=SideCounts(n, latency=latency_histogram(lat[0, :n] * ratio)),
                              primary=SideCounts(n, latency=latency_histogram(lat[1, :n])))
            return latency_gate(ev, POLICY, 1.25).verdict
        assert simulate(judge, 10_000, 1_000)[0] is expected


# -- expected samples to a verdict ---------------------------------------------------------------


def snap(evidence: StepEvidence, policy_interval_in: float = 60, shadowed: bool = True) -> Snapshot:
    return Snapshot(RolloutState(Phase.SHADOWING), evidence, 1_000.0, 1_000.0 - policy_interval_in, 0.0, shadowed)


def window(n: int, agree: float, errors_c: float, errors_p: float, ratio: float) -> StepEvidence:
    return StepEvidence(n, round(n * agree), SideCounts(n, round(n * errors_p), lognormal(n, 0.05)),
                        SideCounts(n, round(n * errors_c), lognormal(n, 0.05 * ratio)))


def test_expected_samples_per_gate() -> None:
    # a candidate 1.15x as slow: inside the latency zone (1 .. 1.5625), so no quick verdict there
    early = gate_expectations(snap(window(600, 0.996, 0.01, 0.01, 1.15)), POLICY)
    assert [e.gate for e in early] == [Gate.AGREEMENT, Gate.ERROR_RATE, Gate.LATENCY]
    assert all(0 < e.samples < 10_000 for e in early)
    later = gate_expectations(snap(window(1_200, 0.996, 0.01, 0.01, 1.15)), POLICY)
    assert all(b.samples < a.samples for a, b in zip(early, later, strict=True) if a.samples > 0)


def test_expected_samples_are_zero_once_decided_and_respect_min_samples() -> None:
    decided = window(50_000, 0.999, 0.001, 0.001, 1.0)
    assert expected_samples(snap(decided), POLICY) == 0
    thin = window(100, 1.0, 0.0, 0.0, 1.0)
    assert all(e.samples >= POLICY.min_samples - 100 for e in gate_expectations(snap(thin), POLICY))


def test_no_gate_no_expectation_and_no_traffic_no_time() -> None:
    agree_only = RolloutPolicy(gates=Gates(max_latency_ratio=None, max_error_rate_increase=None))
    assert expected_samples(snap(window(600, 0.996, 0, 0, 1), shadowed=False), agree_only) is None
    assert expected_seconds(snap(window(600, 0.996, 0.01, 0.01, 1.0)), POLICY, 0.0) is None
    assert math.isinf(expected_samples(snap(StepEvidence()), POLICY) or 0.0)


def test_expected_seconds_follow_the_rate_and_the_interval() -> None:
    s = snap(window(600, 0.996, 0.01, 0.01, 1.0), policy_interval_in=0)
    samples = expected_samples(s, POLICY)
    assert samples is not None and math.isfinite(samples)
    assert expected_seconds(s, POLICY, 10.0) == pytest.approx(max(samples / 10, POLICY.interval_s))
    assert expected_seconds(s, POLICY, 1e6) == pytest.approx(POLICY.interval_s)  # the interval still applies


# -- configuration and the loop's pair counters --------------------------------------------------

ROLLOUT_YAML = """\
listen: 127.0.0.1:1
backends: {{a: {{url: 'http://h:1'}}, b: {{url: 'http://h:2'}}}}
routes:
  - name: r
    match: {{path: /}}
    primary: a
    candidate: b
    rollout:
      gates:
{gates}
"""


def rollout_gates(lines: str) -> Gates:
    cfg = parse_config(ROLLOUT_YAML.format(gates=lines), "t.yaml")
    rollout = cfg.routes[0].rollout
    assert rollout is not None
    return rollout.policy.gates


def test_zone_keys_are_read_and_optional() -> None:
    assert rollout_gates("        min_agreement: 0.99") == Gates()
    gates = rollout_gates("        max_error_rate_increase: 0.01\n        error_indifference: 0.004\n"
                          "        min_accuracy_delta: -0.02\n        accuracy_indifference: 0.01\n"
                          "        latency_indifference: 1.1\n        agreement_indifference: 0.002")
    assert (gates.error_margin, gates.accuracy_margin, gates.latency_indifference, gates.agreement_indifference) == (
        0.004, 0.01, 1.1, 0.002)


@pytest.mark.parametrize(("lines", "message"), [
    ("        error_indifference: null", "t.yaml:10: routes[0].rollout.gates.error_indifference: expected a number"),
    ("        latency_indifference: 0.5", "routes[0].rollout.gates: latency_indifference must be at least 1"),
    ("        max_error_rate_increase: 0.5\n        error_indifference: 0.6", "error_indifference must lie"),
    ("        error_margin: 0.1", "error_margin"),  # unknown keys stay errors
])
def test_zone_key_errors(lines: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        rollout_gates(lines)
    assert message in str(info.value)


def test_window_counts_discordant_pairs_and_reads_old_windows() -> None:
    w = WindowCounters(("v1", "v2"), True, 0.0)
    for live_ok, shadow_ok in [(True, True), (True, False), (False, True), (False, False), (True, False)]:
        w.pair(200 if live_ok else 503, None, 0.01, 200 if shadow_ok else 503, None, 0.02)
    ev = w.evidence()
    assert (ev.pairs, ev.discordant_candidate, ev.discordant_primary) == (5, 2, 1)
    assert (ev.candidate.errors, ev.primary.errors) == (3, 2) and ev.paired
    assert WindowCounters.from_json(("v1", "v2"), 0.0, json.loads(json.dumps(w.to_json()))).evidence() == ev
    old = w.to_json()
    for key in ("pairs", "discordant_candidate", "discordant_primary"):
        del old[key]
    restored = WindowCounters.from_json(("v1", "v2"), 0.0, old).evidence()
    assert restored.pairs == 0 and not restored.paired  # judged unpaired, counts intact
    assert restored.candidate == ev.candidate


def test_expected_seconds_at_the_rate_the_step_has_seen() -> None:
    ev = window(600, 0.996, 0.01, 0.01, 1.0)
    s = snap(ev, policy_interval_in=60)  # 600 samples in 60 s: 10 per second for every gate
    expectations = gate_expectations(s, POLICY)
    assert all(e.seconds == pytest.approx(e.samples / 10) for e in expectations)
    assert expected_seconds(s, POLICY) == pytest.approx(max(max(e.samples for e in expectations) / 10, 0))
    assert expected_seconds(snap(ev, policy_interval_in=0), POLICY) is None  # no time elapsed: no rate yet


@pytest.mark.parametrize("gate", [0.0, 0.005, 0.3, 0.5, 0.9, 0.999])
def test_every_gate_valid_before_zones_still_is(gate: float) -> None:
    assert Gates(max_error_rate_increase=gate).error_margin > 0
    assert Gates(min_accuracy_delta=-gate, max_error_rate_increase=None).accuracy_margin > 0
    assert Gates(min_accuracy_delta=gate, max_error_rate_increase=None).accuracy_margin > 0
