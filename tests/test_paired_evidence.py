"""Pairing on shadowed steps: the window counts exceedances of the same request and feedback that
scored both predictions; the sums survive the cluster's flat fields; the paired latency and
accuracy tests give the right verdicts on fixed counts and point the right way in small seeded
simulations; and a shadowed step's latency evidence reaches the gate paired through the ledger."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from router.analysis.decision import (
    LATENCY_BUCKETS_S,
    Gates,
    PairedLatency,
    RolloutPolicy,
    SideCounts,
    StepEvidence,
    Verdict,
    accuracy_gate,
    latency_gate,
)
from router.analysis.paired_latency import paired_claims, threshold_range
from router.control.ledger import Ledger, PairOutcome
from router.control.shadowstats import ShadowStats
from router.control.splits import Splits
from router.control.state import StateStore
from router.control.window import LatencyPairs, WindowCounters, latency_factors
from router.observe.feedback import FeedbackResult, Scored

POLICY = RolloutPolicy()
FACTORS = latency_factors(POLICY)
INC, PASS, FAIL = Verdict.INCONCLUSIVE, Verdict.PASS, Verdict.FAIL
B = LATENCY_BUCKETS_S


def test_factors_are_the_zone_edges() -> None:
    assert pytest.approx((1.5625, 1.0)) == FACTORS
    assert latency_factors(RolloutPolicy(gates=Gates(max_latency_ratio=None))) is None


@pytest.mark.parametrize(("live", "shadow"), [(0.1, 0.2), (0.2, 0.1), (0.1, 0.1), (0.1, 0.15), (0.001, 70.0)])
def test_each_pair_counts_at_every_threshold_where_exactly_one_side_exceeds(live: float, shadow: float) -> None:
    pairs = LatencyPairs((1.5625, 1.0))
    pairs.record(live, shadow)
    counts = pairs.counts()
    for k, factor in enumerate(pairs.factors):
        for i, t in enumerate(B):
            assert counts.worse[k][i] == (live <= t and shadow > factor * t), (k, i)
            assert counts.better[k][i] == (live > t and shadow <= factor * t), (k, i)


def shadowed_window() -> WindowCounters:
    w = WindowCounters(("v1", "v2"), True, 0.0, latency_factors=FACTORS)
    for live, shadow in ((0.05, 0.09), (0.2, 0.1), (0.04, 0.04), (0.3, 0.6)):
        w.pair(200, None, live, 200, None, shadow)
    w.scored_pair(True, False)
    w.scored_pair(True, True)
    return w


def test_window_round_trips_and_sums_through_the_cluster_fields() -> None:
    from router.cluster.shared_ledger import add_fields, flatten, window_of  # after router.config (import order)

    w = shadowed_window()
    assert WindowCounters.from_json(w.key, 0.0, w.to_json()).evidence() == w.evidence()
    ev = w.evidence()
    assert ev.paired and ev.feedback_paired and ev.paired_latency is not None
    assert (ev.labelled_pairs, ev.only_primary_right, ev.only_candidate_right) == (2, 1, 0)
    fields = flatten(w.to_json())
    both = window_of({k.encode(): str(v).encode() for k, v in add_fields(fields, fields).items()}, True, FACTORS)
    assert both.evidence() == ev + ev
    # a member's hash without the factors (they are floats, not counters) is read unpaired
    assert window_of(fields).evidence().paired_latency is None


def test_unmatched_factors_do_not_add_and_a_negative_range_is_refused() -> None:
    a = shadowed_window().evidence().paired_latency
    assert a is not None
    with pytest.raises(ValueError, match="different factors"):
        _ = a + PairedLatency((2.0, 1.0), a.worse, a.better)
    data = shadowed_window().to_json()
    data["latency_pairs"]["0"]["worse"]["e"] = {"5": 9}
    with pytest.raises(ValueError, match="end before they start"):
        WindowCounters.from_json(("v1", "v2"), 0.0, data)


# -- the paired latency test on fixed counts ------------------------------------------------------


def fixed(n: int, primary_p99_index: int, worse: tuple[int, int], better: tuple[int, int]) -> tuple[
        PairedLatency, tuple[int, ...]]:
    """n pairs; the primary's histogram puts 1% above bucket `primary_p99_index`; at every
    threshold the pass (k=0) and fail (k=1) tests see the given worse and better counts."""
    hist = [0] * (len(B) + 1)
    hist[primary_p99_index - 20] = n - n // 100
    hist[primary_p99_index + 1] = n // 100
    per = [tuple([x] * len(B)) for x in (*worse, *better)]
    return PairedLatency(FACTORS, (per[0], per[1]), (per[2], per[3])), tuple(hist)


@pytest.mark.parametrize(("n", "worse", "better", "claims"), [
    (300, (0, 0), (0, 0), (False, False)),  # too few samples to bound the primary's p99 on both sides
    (3000, (0, 30), (30, 0), (True, True)),  # worse never at gate x f, always at gate / f: inside the zone
    (3000, (0, 0), (30, 30), (True, False)),  # the candidate is faster, wherever the p99 lies
    (3000, (30, 30), (0, 0), (False, True)),  # slower, even counting against gate x f
    (3000, (15, 15), (15, 15), (False, False)),  # as often worse as better: no claim either way
    (3000, (0, 0), (3, 3), (False, False)),  # too few discordant pairs
])
def test_paired_claims(n: int, worse: tuple[int, int], better: tuple[int, int], claims: tuple[bool, bool]) -> None:
    counts, primary = fixed(n, 120, worse, better)
    assert paired_claims(counts, primary, 0.99, 0.01, 0.01 / 12) == claims


def test_threshold_range_brackets_the_primary_quantile() -> None:
    _, primary = fixed(5000, 120, (0, 0), (0, 0))
    span = threshold_range(primary, 0.99, 0.01)
    assert span is not None and span.start <= 120 < span.stop
    assert threshold_range(primary[:1] + (0,) * len(B), 0.99, 0.01) is None


# -- seeded simulations: the direction of every verdict --------------------------------------------


def simulate(ratio: float, shared: float, seed: int, n: int = 3000) -> Verdict:
    """n shadowed pairs through a real window; latencies lognormal with a shared per-request part."""
    rng = np.random.default_rng(seed)
    w = WindowCounters(("v1", "v2"), True, 0.0, latency_factors=FACTORS)
    z = math.sqrt(shared) * rng.standard_normal(n) + math.sqrt(1 - shared) * rng.standard_normal((2, n))
    for live, shadow in zip(0.05 * np.exp(0.5 * z[0]), ratio * 0.05 * np.exp(0.5 * z[1]), strict=True):
        w.pair(200, None, float(live), 200, None, float(shadow))
    result = latency_gate(w.evidence(), POLICY, 1.25)
    assert result.paired and result.method == "paired exceedances and quantile SPRT"
    return result.verdict


@pytest.mark.parametrize(("ratio", "wrong"), [(1.0, FAIL), (1.7, PASS), (2.5, PASS)])
@pytest.mark.parametrize("shared", [0.0, 0.8])
def test_paired_latency_verdicts_point_the_right_way(ratio: float, wrong: Verdict, shared: float) -> None:
    verdicts = [simulate(ratio, shared, seed) for seed in range(3)]
    assert wrong not in verdicts and verdicts.count(INC) <= 1, verdicts


def test_paired_accuracy_reads_only_the_discordant_pairs() -> None:
    policy = RolloutPolicy(gates=Gates(min_accuracy_delta=-0.01))

    def ev(n: int, only_candidate: int, only_primary: int, both: int) -> StepEvidence:
        return StepEvidence(primary=SideCounts(labelled=n, correct=only_primary + both),
                            candidate=SideCounts(labelled=n, correct=only_candidate + both),
                            labelled_pairs=n, only_candidate_right=only_candidate, only_primary_right=only_primary)

    same = ev(2000, 10, 10, 1780)  # 90% right on both sides, nearly always the same requests
    result = accuracy_gate(same, policy, -0.01)
    assert (result.verdict, result.paired, result.method) == (PASS, True, "paired SPRT (discordant pairs)")
    unpaired = StepEvidence(primary=same.primary, candidate=same.candidate)
    assert accuracy_gate(unpaired, policy, -0.01).verdict is INC  # the same margins, independent: too little
    assert accuracy_gate(ev(2000, 10, 80, 1700), policy, -0.01).verdict is FAIL  # -3.5 points
    assert accuracy_gate(ev(400, 0, 0, 360), policy, -0.01).verdict is INC  # below min_samples


@pytest.mark.parametrize(("delta", "expected"), [(0.0, PASS), (-0.04, FAIL)])
def test_paired_accuracy_verdicts_point_the_right_way(delta: float, expected: Verdict) -> None:
    policy = RolloutPolicy(gates=Gates(min_accuracy_delta=-0.01))
    for seed in range(3):
        rng = np.random.default_rng(seed)
        w = WindowCounters(("v1", "v2"), True, 0.0)
        hard = rng.random(6000) < 0.1  # requests both models get wrong more often
        live = rng.random(6000) < np.where(hard, 0.3, 0.98)
        flip = rng.random(6000) < abs(delta) * 2
        shadow = np.where(flip, live if delta == 0 else False, live)
        for a, b in zip(live, shadow, strict=True):
            w.scored_pair(bool(a), bool(b))
        assert accuracy_gate(w.evidence(), policy, -0.01).verdict is expected, seed


# -- end to end through the ledger -----------------------------------------------------------------


@pytest.mark.parametrize("shared", [False, True])
def test_a_shadowed_steps_latency_evidence_reaches_the_gate_paired(tmp_path: Path, shared: bool) -> None:
    from router.cluster.shared_ledger import SharedLedger

    splits = Splits(StateStore(tmp_path / "state"))
    ledger = SharedLedger(splits) if shared else Ledger(splits)
    ledger.shadow["r"] = ShadowStats("v1", "v2")  # what reconcile() sets up for a route shadowing v2
    ledger.open_window("r", WindowCounters(("v1", "v2"), True, 0.0, latency_factors=FACTORS))
    rng = np.random.default_rng(3)
    for live in 0.05 * np.exp(0.5 * rng.standard_normal(3000)):
        ledger.pair(PairOutcome("r", "v2", 200, None, float(live), 200, None, float(live) * 1.05, False))
    if shared:
        assert isinstance(ledger, SharedLedger)
        ledger.take_deltas()  # as the flusher does: the counts wait in `pending`, summed into evidence
    ev = ledger.evidence("r")
    assert ev is not None and ev.paired and ev.paired_latency is not None
    result = latency_gate(ev, POLICY, 1.25)
    assert (result.paired, result.verdict) == (True, PASS)
    assert "paired" in str(result) and result.to_json()["test"] == "paired exceedances and quantile SPRT"


def test_feedback_on_both_predictions_is_counted_as_a_pair(tmp_path: Path) -> None:
    ledger = Ledger(Splits(StateStore(tmp_path / "state")))
    ledger.open_window("r", WindowCounters(("v1", "v2"), True, 0.0))
    ledger.scored(FeedbackResult((), (
        Scored("r", "v1", 1.0, True, None), Scored("r", "v2", 1.0, False, None, shadow=True),
        Scored("r", "v1", 2.0, True, None),  # no shadow prediction for this one
        Scored("r", "v1", 3.0, False, None), Scored("r", "v2", 3.0, None, None, shadow=True),  # shadow unscored
    )))
    ev = ledger.evidence("r")
    assert ev is not None
    assert (ev.labelled_pairs, ev.only_primary_right, ev.primary.labelled, ev.candidate.labelled) == (1, 1, 3, 1)
    assert not ev.feedback_paired  # two live predictions without a scored shadow: judged unpaired
