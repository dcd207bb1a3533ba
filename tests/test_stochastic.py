"""The opt-in stochastic-order latency test: its claims on fixed counts, the window's per-request
comparisons (the same request when shadowed, arrival order on canary steps), strict config, the
direction of its verdicts in small seeded simulations, and its expected time to a verdict."""

from __future__ import annotations

import numpy as np
import pytest

from router.analysis.decision import Gate, Gates, RolloutPolicy, Verdict, evaluate_gates
from router.analysis.expectation import gate_expectations
from router.analysis.rollout_types import Phase, RolloutState, Snapshot, StepEvidence
from router.analysis.stochastic import stochastic_claims, stochastic_latency_gate
from router.config import ConfigError
from router.control.window import WindowCounters, latency_factors
from tests.test_gates import rollout_gates

STOCHASTIC = RolloutPolicy(gates=Gates(latency_test="stochastic"))
FACTORS = latency_factors(STOCHASTIC)
INC, PASS, FAIL = Verdict.INCONCLUSIVE, Verdict.PASS, Verdict.FAIL
ALPHA, BETA = 0.01, 0.01 / 12


@pytest.mark.parametrize(("n", "worse_pass", "worse_fail", "claims"), [
    (0, 0, 0, (False, False)),
    (600, 60, 300, (True, False)),  # rarely slower than 1.5625x, half the time slower than 1x: passes
    (600, 400, 560, (False, True)),  # mostly slower even than 1.5625x: fails
    (600, 280, 320, (False, False)),  # near a half at both factors: no claim
    (4000, 1000, 3000, (True, False)),  # inside the zone, both claims hold: the shares together say pass
    (4000, 1900, 3900, (False, True)),  # ... and here fail
    (20, 4, 10, (False, False)),  # too few comparisons
])
def test_stochastic_claims(n: int, worse_pass: int, worse_fail: int, claims: tuple[bool, bool]) -> None:
    assert stochastic_claims(n, worse_pass, worse_fail, ALPHA, BETA) == claims


def test_gate_names_its_test_and_respects_min_samples() -> None:
    ev = StepEvidence(order_pairs=400, order_worse_pass=0, order_worse_fail=100)
    assert stochastic_latency_gate(ev, STOCHASTIC).verdict is INC  # below min_samples (500)
    result = stochastic_latency_gate(StepEvidence(order_pairs=600, order_worse_pass=60, order_worse_fail=300),
                                     STOCHASTIC)
    assert result.verdict is PASS and result.method is not None and result.method.startswith("stochastic-order")
    assert "unpaired" in result.method and result.to_json()["test"] == result.method


def test_the_quantile_test_stays_the_default_and_config_is_strict() -> None:
    assert Gates().latency_test == "quantile"
    assert rollout_gates("        latency_test: stochastic").latency_test == "stochastic"
    with pytest.raises(ConfigError) as info:
        rollout_gates("        latency_test: median")
    assert "routes[0].rollout.gates.latency_test: must be one of quantile, stochastic, got 'median'" in str(info.value)
    with pytest.raises(ValueError, match="latency_test must be one of"):
        Gates(latency_test="tail")


def test_the_window_compares_the_same_request_when_shadowed_and_arrivals_otherwise() -> None:
    shadowed = WindowCounters(("v1", "v2"), True, 0.0, latency_factors=FACTORS)
    shadowed.pair(200, None, 0.10, 200, None, 0.12)  # slower than 1x, not than 1.5625x
    shadowed.pair(200, None, 0.10, 200, None, 0.20)  # slower than both
    ev = shadowed.evidence()
    assert (ev.order_pairs, ev.order_worse_pass, ev.order_worse_fail) == (2, 1, 2)
    canary = WindowCounters(("v1", "v2"), False, 0.0, latency_factors=FACTORS)
    for backend, seconds in (("v1", 0.1), ("v1", 0.3), ("v2", 0.2), ("v2", 0.05), ("v2", 1.0)):
        canary.live(backend, 200, seconds)
    ev = canary.evidence()
    # v1 0.1 waits, 0.3 replaces it; v2 0.2 pairs with 0.3 (faster); v2 0.05 waits, then 1.0 replaces it
    assert (ev.order_pairs, ev.order_worse_pass, ev.order_worse_fail) == (1, 0, 0)
    restored = WindowCounters.from_json(canary.key, 0.0, canary.to_json())
    assert restored.evidence() == ev and restored.factors == FACTORS


def simulate(ratio: float, shadowed: bool, seed: int, n: int = 2000) -> Verdict:
    rng = np.random.default_rng(seed)
    w = WindowCounters(("v1", "v2"), shadowed, 0.0, latency_factors=FACTORS)
    common = rng.standard_normal(n)
    live = 0.05 * np.exp(0.5 * (0.7 * common + 0.7 * rng.standard_normal(n)))
    cand = ratio * 0.05 * np.exp(0.5 * (0.7 * common + 0.7 * rng.standard_normal(n)))
    for a, b in zip(live.tolist(), cand.tolist(), strict=True):
        if shadowed:
            w.pair(200, None, a, 200, None, b)
        else:
            w.live("v1", 200, a)
            w.live("v2", 200, b)
    (result,) = [g for g in evaluate_gates(snapshot(w.evidence(), shadowed), STOCHASTIC) if g.name is Gate.LATENCY]
    return result.verdict


def snapshot(ev: StepEvidence, shadowed: bool) -> Snapshot:
    return Snapshot(RolloutState(Phase.SHADOWING), ev, 100.0, 0.0, 0.0, shadowed=shadowed)


@pytest.mark.parametrize(("ratio", "wrong"), [(1.0, FAIL), (0.8, FAIL), (1.8, PASS), (2.5, PASS)])
@pytest.mark.parametrize("shadowed", [True, False])
def test_stochastic_verdicts_point_the_right_way(ratio: float, wrong: Verdict, shadowed: bool) -> None:
    verdicts = [simulate(ratio, shadowed, seed) for seed in range(3)]
    assert wrong not in verdicts and verdicts.count(INC) <= 1, verdicts


def test_expected_samples_for_the_stochastic_test() -> None:
    ev = StepEvidence(order_pairs=200, order_worse_pass=40, order_worse_fail=100)
    (expectation,) = [e for e in gate_expectations(snapshot(ev, True), STOCHASTIC) if e.gate is Gate.LATENCY]
    assert 0 < expectation.samples < 5000
    ev = StepEvidence(order_pairs=200, order_worse_pass=100, order_worse_fail=100)
    (stuck,) = [e for e in gate_expectations(snapshot(ev, True), STOCHASTIC) if e.gate is Gate.LATENCY]
    assert stuck.samples == float("inf")  # exactly a half at both factors: never decides
