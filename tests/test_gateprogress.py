"""Gate progress for the status page: the same verdicts as `decide`, distances to a decision, timing."""

from __future__ import annotations

import math
from typing import Any

import pytest

from router.admin.gateprogress import progress
from router.analysis.decision import (
    Gates,
    Phase,
    RolloutPolicy,
    RolloutState,
    SideCounts,
    Snapshot,
    StepEvidence,
    decide,
    error_budget,
    latency_histogram,
)

POLICY = RolloutPolicy(steps=(0, 50, 100), interval_s=60, min_samples=200, max_duration_s=3600,
                       gates=Gates(min_agreement=0.9, max_latency_ratio=1.5, max_error_rate_increase=0.05),
                       confidence=0.95)


def side(n: int, errors: int, latency_s: float) -> SideCounts:
    return SideCounts(n, errors, latency_histogram([latency_s] * n))


def info(phase: Phase, step: int = 0, shadowed: bool = True) -> dict[str, Any]:
    return {"phase": str(phase), "step_index": step, "approved": False, "step_started_at": 1000.0,
            "rollout_started_at": 900.0, "shadowed": shadowed}


GOOD = StepEvidence(2000, 1990, side(2000, 0, 0.01), side(2000, 0, 0.01))
BAD = StepEvidence(2000, 1500, side(2000, 0, 0.01), side(2000, 0, 0.01))
EARLY = StepEvidence(50, 45, side(50, 0, 0.01), side(50, 0, 0.01))


@pytest.mark.parametrize(("evidence", "verdicts", "waiting"), [
    (GOOD, {"agreement": "pass", "error_rate": "pass", "latency": "pass"}, "interval"),
    (BAD, {"agreement": "fail", "error_rate": "pass", "latency": "pass"}, "samples"),
    (EARLY, {"agreement": "inconclusive", "error_rate": "inconclusive", "latency": "inconclusive"}, "samples"),
])
def test_verdicts_are_those_the_loop_decides_on(evidence: StepEvidence, verdicts: dict[str, str],
                                                 waiting: str) -> None:
    now = 1010.0
    got = progress(info(Phase.SHADOWING), POLICY, evidence, False, now)
    decision = decide(Snapshot(RolloutState(Phase.SHADOWING), evidence, now, 1000.0, 900.0, shadowed=True), POLICY)
    assert {g["gate"]: g["verdict"] for g in got["gates"]} == verdicts
    assert {str(g.name): str(g.verdict) for g in decision.gates} == verdicts
    for shown, gate in zip(got["gates"], decision.gates, strict=True):
        assert (shown["n"], shown["estimate"], shown["low"], shown["high"]) == (gate.n, gate.estimate, gate.low,
                                                                                  gate.high)
        assert shown["min_samples"] == 200
        # A decided gate expects nothing more; an undecided one a positive number of samples.
        if gate.verdict == "inconclusive":
            assert shown["expected_samples"] is None or shown["expected_samples"] > 0
        else:
            assert shown["expected_samples"] == 0 and shown["verdict_in_sight"] is True
    assert got["waiting_for"] == waiting and got["final"] is False
    assert got["timing"]["earliest_advance_at"] == 1060.0 and got["timing"]["deadline_at"] == 4500.0


def test_the_sprt_ratio_sits_between_its_bounds_until_it_crosses_one() -> None:
    alpha, beta = error_budget(POLICY)
    by_name = {name: {g["gate"]: g for g in progress(info(Phase.SHADOWING), POLICY, ev, False, 0.0)["gates"]}
               for name, ev in (("good", GOOD), ("bad", BAD), ("early", EARLY))}
    for name in ("good", "bad", "early"):
        sprt = by_name[name]["agreement"]["sprt"]
        assert sprt["pass_at"] == pytest.approx(-math.log(alpha)) and sprt["fail_at"] == pytest.approx(math.log(beta))
    assert by_name["good"]["agreement"]["sprt"]["llr"] >= by_name["good"]["agreement"]["sprt"]["pass_at"]
    assert by_name["bad"]["agreement"]["sprt"]["llr"] <= by_name["bad"]["agreement"]["sprt"]["fail_at"]
    early = by_name["early"]["agreement"]["sprt"]
    assert early["fail_at"] < early["llr"] < early["pass_at"]
    # Distances: reached (<= 0) exactly on the side the verdict went to.
    assert by_name["good"]["agreement"]["to_pass"] <= 0 < by_name["good"]["agreement"]["to_fail"]
    assert by_name["bad"]["agreement"]["to_fail"] < 0 < by_name["bad"]["agreement"]["to_pass"]
    assert by_name["good"]["error_rate"]["better"] == "lower" and by_name["good"]["error_rate"]["to_pass"] <= 0
    assert "sprt" not in by_name["good"]["error_rate"]


@pytest.mark.parametrize(("phase", "waiting", "final"), [
    (Phase.PAUSED, "operator", False),
    (Phase.AWAITING_APPROVAL, "approval", False),
    (Phase.ROLLED_BACK, None, True),
])
def test_what_the_next_move_waits_for(phase: Phase, waiting: str | None, final: bool) -> None:
    got = progress(info(phase, step=1 if phase is Phase.AWAITING_APPROVAL else 0), POLICY, EARLY, False, 0.0)
    assert (got["waiting_for"], got["final"]) == (waiting, final)
    assert (got["gates"] == []) == final


def test_a_promoted_rollout_has_no_gates_and_no_agreement_without_a_shadow() -> None:
    assert progress(info(Phase.PROMOTED, step=2), POLICY, GOOD, False, 0.0)["gates"] == []
    live = progress(info(Phase.PROGRESSING, step=1, shadowed=False), POLICY, GOOD, False, 0.0)
    assert [g["gate"] for g in live["gates"]] == ["error_rate", "latency"]


def test_expectations_are_shown_finite_or_as_none_in_sight() -> None:
    from dataclasses import dataclass

    from router.admin.gateprogress import gate_progress
    from router.analysis.decision import Gate

    @dataclass
    class Expected:
        gate: Gate
        samples: float
        seconds: float | None

    decision = decide(Snapshot(RolloutState(Phase.SHADOWING), EARLY, 1010.0, 1000.0, 900.0, shadowed=True), POLICY)
    agreement = decision.gates[0]
    shown = gate_progress(agreement, POLICY, EARLY, Expected(Gate.AGREEMENT, 420.0, 84.0))
    assert (shown["expected_samples"], shown["expected_seconds"], shown["verdict_in_sight"]) == (420.0, 84.0, True)
    shown = gate_progress(agreement, POLICY, EARLY, Expected(Gate.AGREEMENT, math.inf, None))
    assert (shown["expected_samples"], shown["expected_seconds"], shown["verdict_in_sight"]) == (None, None, False)
