"""Rollout decisions: each gate, decide() transitions and operator actions, from tables of cases."""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Callable
from functools import cache
from statistics import NormalDist

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from router.analysis.decision import (
    EMPTY_HISTOGRAM,
    LATENCY_BUCKETS_S,
    Action,
    Gates,
    InvalidTransition,
    OperatorAction,
    Phase,
    RolloutPolicy,
    RolloutState,
    SideCounts,
    Snapshot,
    StepEvidence,
    Verdict,
    accuracy_gate,
    agreement_gate,
    decide,
    error_budget,
    error_rate_gate,
    evaluate_gates,
    initial_state,
    latency_gate,
    latency_histogram,
    operator_action,
)

POLICY = RolloutPolicy()  # the config: agreement, latency and error-rate gates
AGREE_ONLY = RolloutPolicy(gates=Gates(max_latency_ratio=None, max_error_rate_increase=None))
APPROVAL = dataclasses.replace(POLICY, approval=True)
PAUSE_ON_FAILURE = dataclasses.replace(POLICY, on_failure=Action.PAUSE)
ROLLBACK_ON_TIMEOUT = dataclasses.replace(POLICY, on_timeout=Action.ROLLBACK)
WITH_ACCURACY = RolloutPolicy(gates=Gates(min_accuracy_delta=-0.01))
INC, PASS, FAIL = Verdict.INCONCLUSIVE, Verdict.PASS, Verdict.FAIL


@cache
def lognormal(n: int, median_s: float, sigma: float = 0.5) -> tuple[int, ...]:
    """A deterministic latency histogram: the n evenly spaced quantiles of a lognormal."""
    z = NormalDist().inv_cdf
    return latency_histogram(median_s * math.exp(sigma * z((i + 0.5) / n)) for i in range(n))


def side(n: int, errors: int = 0, median_s: float = 0.05, labelled: int = 0, correct: int = 0) -> SideCounts:
    return SideCounts(n, errors, lognormal(n, median_s), labelled, correct)


GOOD = StepEvidence(20_000, 20_000, side(50_000), side(50_000))
BAD = dataclasses.replace(GOOD, agreements=19_000)
MURKY = dataclasses.replace(GOOD, comparisons=1_000, agreements=990)  # agreement right at the gate
THIN = StepEvidence(400, 400, side(400), side(400))
EMPTY = StepEvidence()


def state(phase: Phase, step: int = 0, approved: bool = False) -> RolloutState:
    return RolloutState(phase, step, approved)


def snap(st_: RolloutState, evidence: StepEvidence, in_step: float = 60, in_rollout: float = 600,
         shadowed: bool = True, feedback: bool = False) -> Snapshot:
    now = 10_000 + in_rollout
    return Snapshot(st_, evidence, now, now - in_step, 10_000, shadowed, feedback)


# -- gates ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("n", "k", "verdict"), [
    (0, 0, INC),  # no data is never a pass
    (499, 499, INC),  # perfect, but below min_samples
    (500, 500, PASS),
    (1_000, 990, INC),  # exactly at the gate: keep collecting
    (1_000, 970, FAIL),
    (2_000, 1_990, PASS),  # 0.995
    (5_000, 4_925, FAIL),  # 0.985
])
def test_agreement_gate(n: int, k: int, verdict: Verdict) -> None:
    result = agreement_gate(StepEvidence(n, k), POLICY, 0.99)
    assert (result.verdict, result.n, result.threshold) == (verdict, n, 0.99)
    assert result.low is not None and result.high is not None and result.low <= result.high
    if verdict is PASS:
        assert result.low >= 0.99
    if verdict is FAIL:
        assert result.high <= 0.99


@pytest.mark.parametrize(("candidate", "primary", "verdict"), [
    (SideCounts(), SideCounts(), INC),
    (SideCounts(400), SideCounts(400), INC),  # below min_samples
    (SideCounts(50_000, 50), SideCounts(50_000, 50), PASS),  # 0.1% both sides
    (SideCounts(5_000, 10), SideCounts(100_000, 500), PASS),  # candidate better, small canary
    (SideCounts(20_000, 2_000), SideCounts(20_000, 200), FAIL),  # 10% against 1%
    (SideCounts(1_000, 15), SideCounts(1_000, 10), INC),  # 1.5% against 1%: too little to tell
    (SideCounts(5_000, 60), SideCounts(5_000, 50), PASS),  # +0.2 points: inside the zone, below the gate
    (SideCounts(10_000, 210), SideCounts(10_000, 100), FAIL),  # +1.1 points: beyond the zone's bad edge
])
def test_error_rate_gate(candidate: SideCounts, primary: SideCounts, verdict: Verdict) -> None:
    result = error_rate_gate(StepEvidence(candidate=candidate, primary=primary), POLICY, 0.005)
    assert result.verdict is verdict
    assert result.low is not None and result.high is not None and result.low <= result.high
    assert result.ci_low is not None and result.ci_high is not None
    assert result.ci_low <= (result.estimate or 0.0) <= result.ci_high
    assert (result.zone, result.paired) == ((0.0, 0.01), False)


@pytest.mark.parametrize(("n_candidate", "n_primary", "ratio", "verdict"), [
    (0, 0, 1.0, INC),
    (400, 400, 3.0, INC),  # below min_samples, however bad
    (50_000, 50_000, 1.0, PASS),
    (5_000, 100_000, 1.0, PASS),  # 5% canary
    (20_000, 20_000, 2.0, FAIL),
    (20_000, 20_000, 1.5, FAIL),
    (1_000, 1_000, 1.1, INC),  # p99 of 1,000 samples cannot be bounded to within the zone
    (2_000, 2_000, 1.4, INC),  # inside the zone, not yet clear of its bad edge
])
def test_latency_gate(n_candidate: int, n_primary: int, ratio: float, verdict: Verdict) -> None:
    ev = StepEvidence(candidate=side(n_candidate, median_s=0.05 * ratio), primary=side(n_primary))
    result = latency_gate(ev, POLICY, 1.25)
    assert result.verdict is verdict
    if n_candidate:
        assert result.estimate == pytest.approx(ratio, rel=0.1)


def test_latency_under_the_first_bucket_counts_as_the_first_bucket() -> None:
    fast = SideCounts(50_000, latency=latency_histogram([0.0002] * 50_000))
    assert latency_gate(StepEvidence(candidate=fast, primary=fast), POLICY, 1.25).verdict is PASS


@pytest.mark.parametrize(("candidate", "primary", "verdict"), [
    ((0, 0), (0, 0), INC),
    ((300, 300), (300, 300), INC),
    ((100_000, 90_000), (100_000, 90_000), PASS),  # 90% both
    ((5_000, 4_000), (5_000, 4_500), FAIL),  # 80% against 90%
    ((2_000, 1_780), (2_000, 1_800), INC),
])
def test_accuracy_gate(candidate: tuple[int, int], primary: tuple[int, int], verdict: Verdict) -> None:
    ev = StepEvidence(candidate=SideCounts(labelled=candidate[0], correct=candidate[1]),
                      primary=SideCounts(labelled=primary[0], correct=primary[1]))
    assert accuracy_gate(ev, WITH_ACCURACY, -0.01).verdict is verdict


@pytest.mark.parametrize(("shadowed", "feedback", "policy", "gates"), [
    (True, False, POLICY, ["agreement", "error_rate", "latency"]),
    (False, False, POLICY, ["error_rate", "latency"]),  # a canary step without a shadow
    (False, True, WITH_ACCURACY, ["error_rate", "latency", "accuracy"]),
    (False, False, WITH_ACCURACY, ["error_rate", "latency"]),  # no feedback collected
    (False, False, AGREE_ONLY, []),
])
def test_which_gates_apply(shadowed: bool, feedback: bool, policy: RolloutPolicy, gates: list[str]) -> None:
    s = snap(state(Phase.PROGRESSING, 1), GOOD, shadowed=shadowed, feedback=feedback)
    assert [g.name for g in evaluate_gates(s, policy)] == gates


def test_good_evidence_passes_every_default_gate() -> None:
    assert [g.verdict for g in evaluate_gates(snap(state(Phase.SHADOWING), GOOD), POLICY)] == [PASS, PASS, PASS]


def test_error_budget_splits_beta_over_judged_steps_and_gates() -> None:
    assert error_budget(POLICY) == pytest.approx((0.01, 0.01 / (4 * 3)))
    assert error_budget(AGREE_ONLY) == pytest.approx((0.01, 0.01 / 4))


@settings(derandomize=True, max_examples=200, deadline=None)
@given(n=st.integers(0, 499), data=st.data())
def test_nothing_passes_below_min_samples(n: int, data: st.DataObject) -> None:
    def counts() -> SideCounts:
        requests = data.draw(st.integers(0, n))
        return SideCounts(requests, data.draw(st.integers(0, requests)), lognormal(requests, 0.05))
    ev = StepEvidence(n, data.draw(st.integers(0, n)), counts(), counts())
    s = snap(state(Phase.SHADOWING), ev, shadowed=True)
    assert all(g.verdict is not PASS for g in evaluate_gates(s, POLICY))
    assert decide(s, POLICY).action is Action.HOLD


# -- decide() ------------------------------------------------------------------------------------

SH, PR, AW, PM, RB, PA = (Phase.SHADOWING, Phase.PROGRESSING, Phase.AWAITING_APPROVAL, Phase.PROMOTED,
                          Phase.ROLLED_BACK, Phase.PAUSED)
LATE = 3 * 3600  # past max_duration


@pytest.mark.parametrize(("policy", "before", "evidence", "kwargs", "action", "after"), [
    pytest.param(POLICY, state(SH), GOOD, {}, Action.ADVANCE, state(PR, 1), id="pass-advances"),
    pytest.param(POLICY, state(SH), GOOD, {"in_step": 10}, Action.HOLD, state(SH), id="interval-not-elapsed"),
    pytest.param(POLICY, state(SH), EMPTY, {}, Action.HOLD, state(SH), id="no-data-holds"),
    pytest.param(POLICY, state(SH), THIN, {}, Action.HOLD, state(SH), id="below-min-samples-holds"),
    pytest.param(POLICY, state(SH), EMPTY, {"in_rollout": LATE}, Action.PAUSE, state(PA), id="timeout-pauses"),
    pytest.param(ROLLBACK_ON_TIMEOUT, state(PR, 2), MURKY, {"in_rollout": LATE}, Action.ROLLBACK, state(RB, 2),
                 id="timeout-rolls-back"),
    pytest.param(POLICY, state(PR, 1), BAD, {}, Action.ROLLBACK, state(RB, 1), id="fail-rolls-back"),
    pytest.param(PAUSE_ON_FAILURE, state(PR, 1), BAD, {}, Action.PAUSE, state(PA, 1), id="fail-pauses"),
    pytest.param(POLICY, state(PR, 1), BAD, {"in_step": 5}, Action.ROLLBACK, state(RB, 1),
                 id="fail-acts-before-interval"),
    pytest.param(POLICY, state(PR, 1), BAD, {"shadowed": False}, Action.ADVANCE, state(PR, 2),
                 id="canary-without-shadow-skips-agreement"),
    pytest.param(POLICY, state(PR, 3), GOOD, {}, Action.PROMOTE, state(PM, 4), id="last-pass-promotes"),
    pytest.param(APPROVAL, state(PR, 3), GOOD, {}, Action.AWAIT_APPROVAL, state(AW, 3), id="approval-asked"),
    pytest.param(APPROVAL, state(PR, 3, True), GOOD, {}, Action.PROMOTE, state(PM, 4, True),
                 id="approved-in-advance"),
    pytest.param(APPROVAL, state(PR, 2), GOOD, {}, Action.ADVANCE, state(PR, 3), id="approval-only-for-last"),
    pytest.param(APPROVAL, state(AW, 3), GOOD, {}, Action.HOLD, state(AW, 3), id="awaiting-holds"),
    pytest.param(APPROVAL, state(AW, 3), GOOD, {"in_rollout": LATE}, Action.HOLD, state(AW, 3),
                 id="awaiting-has-no-deadline"),
    pytest.param(APPROVAL, state(AW, 3), BAD, {}, Action.ROLLBACK, state(RB, 3), id="awaiting-still-watches"),
    pytest.param(APPROVAL, state(AW, 3, True), GOOD, {}, Action.PROMOTE, state(PM, 4, True), id="awaiting-approved"),
    pytest.param(POLICY, state(PM, 4), BAD, {}, Action.NONE, state(PM, 4), id="promoted-stays"),
    pytest.param(POLICY, state(RB, 1), GOOD, {}, Action.NONE, state(RB, 1), id="rolled-back-stays"),
    pytest.param(POLICY, state(PA, 2), GOOD, {"in_rollout": LATE}, Action.HOLD, state(PA, 2), id="paused-holds"),
    pytest.param(AGREE_ONLY, state(SH), GOOD, {"shadowed": False}, Action.HOLD, state(SH), id="no-gate-applies"),
])
def test_decide(policy: RolloutPolicy, before: RolloutState, evidence: StepEvidence, kwargs: dict[str, bool],
                action: Action, after: RolloutState) -> None:
    decision = decide(snap(before, evidence, **kwargs), policy)
    assert (decision.action, decision.state) == (action, after), decision.reason
    assert decision.new_window is (action is Action.ADVANCE)
    assert decision.reason


def test_reasons_name_the_evidence() -> None:
    hold = decide(snap(state(PR, 1), MURKY), POLICY)
    assert "agreement inconclusive: 0.99" in hold.reason and "n=1000" in hold.reason
    assert "rollback" in decide(snap(state(PR, 1), BAD), POLICY).reason
    assert "interval" in decide(snap(state(SH), GOOD, in_step=10), POLICY).reason


@settings(derandomize=True, max_examples=100, deadline=None)
@given(phase=st.sampled_from([PM, RB]), n=st.integers(0, 50_000), bad=st.integers(0, 50_000))
def test_terminal_phases_never_change(phase: Phase, n: int, bad: int) -> None:
    before = state(phase, 4 if phase is PM else 2)
    ev = StepEvidence(n, max(0, n - bad), SideCounts(n), SideCounts(n, min(n, bad)))
    decision = decide(snap(before, ev, in_rollout=LATE), POLICY)
    assert (decision.action, decision.state) == (Action.NONE, before)


@pytest.mark.parametrize("bad_state", [state(PR, 4), state(SH, 9), state(PM, 3), state(PA, -1)])
def test_a_state_that_does_not_fit_the_policy_is_an_error(bad_state: RolloutState) -> None:
    with pytest.raises(ValueError, match="does not fit"):
        decide(snap(bad_state, GOOD), POLICY)


def test_counters_from_two_processes_sum() -> None:
    a = StepEvidence(300, 300, SideCounts(10, 1, latency_histogram([0.01] * 10)), SideCounts(5, 0))
    b = StepEvidence(300, 299, SideCounts(20, 2, latency_histogram([0.02] * 20)), SideCounts(7, 1))
    merged = StepEvidence.merge([a, b])
    assert merged == a + b == b + a
    assert (merged.comparisons, merged.agreements, merged.primary.requests, merged.primary.errors) == (600, 599, 30, 3)
    assert sum(merged.primary.latency) == 30 and merged.candidate == SideCounts(12, 1)
    # Each process alone is below min_samples; together they are judged.
    alone = [decide(snap(state(SH), ev), AGREE_ONLY).action for ev in (a, b)]
    assert alone == [Action.HOLD, Action.HOLD]
    assert decide(snap(state(SH), merged), AGREE_ONLY).action is Action.ADVANCE


@pytest.mark.parametrize("make", [
    lambda: StepEvidence(10, 11),
    lambda: SideCounts(5, 6),
    lambda: SideCounts(labelled=1, correct=2),
    lambda: SideCounts(latency=(0,) * 10),
    lambda: SideCounts(-1),
])
def test_impossible_counts_are_rejected(make: Callable[[], object]) -> None:
    with pytest.raises(ValueError):
        make()


@pytest.mark.parametrize("make", [
    lambda: RolloutPolicy(steps=(0, 50)),
    lambda: RolloutPolicy(steps=(0, 50, 25, 100)),
    lambda: RolloutPolicy(steps=(100,)),
    lambda: RolloutPolicy(confidence=1.0),
    lambda: RolloutPolicy(on_failure=Action.ADVANCE),
    lambda: RolloutPolicy(min_samples=0),
    lambda: Gates(None, None, None, None),
    lambda: Gates(max_latency_ratio=1.05),  # finer than the histogram can resolve
    lambda: Gates(min_agreement=0.999),  # 0.999 + 0.005 > 1
])
def test_invalid_policies_are_rejected(make: Callable[[], object]) -> None:
    with pytest.raises(ValueError):
        make()


def test_latency_buckets() -> None:
    assert LATENCY_BUCKETS_S[0] == 0.001 and 55 < LATENCY_BUCKETS_S[-1] < 65
    assert all(1.03 < b / a < 1.06 for a, b in itertools.pairwise(LATENCY_BUCKETS_S))
    assert latency_histogram([0.0005, 0.001, 0.00101, 100.0]) == (2, 1, *EMPTY_HISTOGRAM[2:-1], 1)


# -- operator actions ----------------------------------------------------------------------------


@pytest.mark.parametrize(("policy", "before", "command", "action", "after"), [
    (POLICY, state(SH), OperatorAction.PROMOTE, Action.ADVANCE, state(PR, 1)),  # no approval implied
    (APPROVAL, state(PR, 3), OperatorAction.PROMOTE, Action.PROMOTE, state(PM, 4, True)),
    (APPROVAL, state(AW, 3), OperatorAction.PROMOTE, Action.PROMOTE, state(PM, 4, True)),
    (APPROVAL, state(AW, 3), OperatorAction.APPROVE, Action.PROMOTE, state(PM, 4, True)),
    (APPROVAL, state(PR, 1), OperatorAction.APPROVE, Action.NONE, state(PR, 1, True)),
    (POLICY, state(PR, 2), OperatorAction.PAUSE, Action.PAUSE, state(PA, 2)),
    (APPROVAL, state(AW, 3), OperatorAction.PAUSE, Action.PAUSE, state(PA, 3)),
    (POLICY, state(PA, 2), OperatorAction.RESUME, Action.RESUME, state(PR, 2)),
    (POLICY, state(PA, 0), OperatorAction.RESUME, Action.RESUME, state(SH, 0)),
    (POLICY, state(PR, 2), OperatorAction.ROLLBACK, Action.ROLLBACK, state(RB, 2)),
    (POLICY, state(PA, 2), OperatorAction.ROLLBACK, Action.ROLLBACK, state(RB, 2)),
    (POLICY, state(PM, 4), OperatorAction.ROLLBACK, Action.ROLLBACK, state(RB, 4)),  # the emergency lever
    (APPROVAL, state(AW, 3), OperatorAction.ROLLBACK, Action.ROLLBACK, state(RB, 3)),
    (POLICY, state(RB, 2), OperatorAction.RESTART, Action.RESTART, state(SH, 0)),
    (POLICY, state(PA, 3, True), OperatorAction.RESTART, Action.RESTART, state(SH, 0)),
])
def test_operator_action(policy: RolloutPolicy, before: RolloutState, command: OperatorAction, action: Action,
                         after: RolloutState) -> None:
    decision = operator_action(before, command, policy)
    assert (decision.action, decision.state) == (action, after)
    assert decision.new_window is (action in (Action.ADVANCE, Action.RESUME, Action.RESTART))
    assert decision.restart_deadline is (action in (Action.RESUME, Action.RESTART))


@pytest.mark.parametrize(("before", "command"), [
    (state(PR, 1), OperatorAction.RESUME),
    (state(SH), OperatorAction.RESTART),
    (state(PA, 1), OperatorAction.PAUSE),
    (state(PA, 1), OperatorAction.PROMOTE),
    (state(RB, 1), OperatorAction.RESUME),  # a rolled-back route stays so until restarted
    (state(RB, 1), OperatorAction.PROMOTE),
    (state(RB, 1), OperatorAction.ROLLBACK),
    (state(PM, 4), OperatorAction.PAUSE),
    (state(PM, 4), OperatorAction.PROMOTE),
    (state(RB, 4), OperatorAction.PROMOTE),
    (state(PM, 4), OperatorAction.RESTART),
    (state(PM, 4), OperatorAction.APPROVE),
])
def test_impossible_operator_actions(before: RolloutState, command: OperatorAction) -> None:
    with pytest.raises(InvalidTransition, match=f"cannot {command}"):
        operator_action(before, command, POLICY)
    assert issubclass(InvalidTransition, ValueError)


@pytest.mark.parametrize(("before", "command", "suggest"), [
    (state(RB, 1), OperatorAction.PROMOTE, ("restart",)),
    (state(RB, 1), OperatorAction.ROLLBACK, ("restart",)),
    (state(PM, 4), OperatorAction.PAUSE, ("finalize", "rollback")),
    (state(PM, 4), OperatorAction.RESTART, ("finalize", "rollback")),
    (state(PA, 1), OperatorAction.PAUSE, ("resume", "restart", "rollback")),
    (state(PR, 1), OperatorAction.RESTART, ("pause", "rollback")),
    (state(PR, 1), OperatorAction.RESUME, ("pause", "promote", "rollback")),
])
def test_refusals_name_commands_that_work(before: RolloutState, command: OperatorAction,
                                          suggest: tuple[str, ...]) -> None:
    with pytest.raises(InvalidTransition) as refused:
        operator_action(before, command, POLICY)
    assert refused.value.suggest == suggest
    for other in suggest:
        if other != "finalize":  # a YAML change, not an operator action
            operator_action(before, OperatorAction(other), POLICY)  # accepted: does not raise


def test_a_rollback_after_promotion_is_final_until_restarted() -> None:
    back = operator_action(state(PM, 4), OperatorAction.ROLLBACK, POLICY, by="alice")
    assert back.state == state(RB, 4) and "rolled back by alice from promoted at step 5 of 5 (100%)" in back.reason
    assert decide(snap(back.state, GOOD), POLICY).action is Action.NONE
    assert operator_action(back.state, OperatorAction.RESTART, POLICY).state == state(SH, 0)


def test_approval_round_trip() -> None:
    asked = decide(snap(state(PR, 3), GOOD), APPROVAL)
    assert asked.action is Action.AWAIT_APPROVAL and not asked.new_window
    done = operator_action(asked.state, OperatorAction.APPROVE, APPROVAL)
    assert (done.action, done.state.phase, decide(snap(done.state, BAD), APPROVAL).action) == (
        Action.PROMOTE, PM, Action.NONE)


# -- statistics under continuous monitoring ------------------------------------------------------


def first_step(p: float, rng: np.random.Generator) -> Action:
    """One shadow step fed 50 comparisons every 5 s, evaluated after each batch as the loop does."""
    n = k = 0
    for i, agreed in enumerate(rng.binomial(50, p, size=1_440).tolist(), start=1):
        n, k = n + 50, k + agreed
        decision = decide(snap(initial_state(AGREE_ONLY), StepEvidence(n, k), in_step=5 * i, in_rollout=5 * i),
                          AGREE_ONLY)
        if decision.action is not Action.HOLD:
            return decision.action
    raise AssertionError("no decision by the deadline")


@pytest.mark.parametrize(("p", "wrong", "seed"), [(0.985, Action.ADVANCE, 11), (0.995, Action.ROLLBACK, 12)])
def test_error_rates_at_the_edges_of_the_indifference_zone(p: float, wrong: Action, seed: int) -> None:
    """The naive rule promotes a 0.985 candidate ~24% of the time; the SPRT stays near 1% (alpha)."""
    rng = np.random.default_rng(seed)
    outcomes = [first_step(p, rng) for _ in range(400)]
    assert outcomes.count(wrong) / len(outcomes) < 0.03
    assert Action.PAUSE not in outcomes
