"""How far each rollout gate is from a decision, for the status page: a read-only view.

The rollout loop only logs a decision; an operator watching a step wants to see it coming. This
re-runs the pure gate evaluation (`decision.evaluate_gates`) on the current step window and says,
per gate, how many samples there are against `min_samples`, where the estimate and its interval
stand against the threshold, and for the agreement SPRT where its log-likelihood ratio lies between
its two bounds. Nothing here changes state: the loop stays the only one that decides.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Protocol

from router.analysis.decision import (
    TERMINAL,
    Gate,
    GateResult,
    Phase,
    RolloutPolicy,
    RolloutState,
    Snapshot,
    StepEvidence,
    Verdict,
    error_budget,
    evaluate_gates,
)
from router.analysis.expectation import gate_expectations as expected_per_gate
from router.analysis.gates import _sprt_llr  # the agreement gate's own statistic; shown, never re-derived

HIGHER_IS_BETTER = frozenset({Gate.AGREEMENT, Gate.ACCURACY})
_MEMO_MAX = 256
_memo: dict[tuple[StepEvidence, RolloutPolicy, bool, bool], tuple[GateResult, ...]] = {}


class Expectation(Protocol):
    """One gate's expected further samples before a verdict (math.inf: none in sight; 0: it has
    one), and the seconds that takes at this step's rate so far (None before any traffic)."""

    @property
    def gate(self) -> Gate: ...
    @property
    def samples(self) -> float: ...
    @property
    def seconds(self) -> float | None: ...


def gate_expectations(snapshot: Snapshot, policy: RolloutPolicy) -> tuple[Expectation, ...]:
    """The expected further samples and seconds to each gate's verdict (router.expectation)."""
    return expected_per_gate(snapshot, policy)


def _finite(x: float | None) -> float | None:
    return x if x is not None and math.isfinite(x) else None  # JSON has no Infinity


def gate_progress(gate: GateResult, policy: RolloutPolicy, evidence: StepEvidence,
                  expected: Expectation | None = None) -> dict[str, Any]:
    """One gate: its verdict, samples against min_samples, interval against threshold, distances.

    `to_pass` / `to_fail`: how far the interval's deciding bound still is from the threshold, in the
    gate's own units (> 0: not reached yet; <= 0: reached, once min_samples are in).
    """
    higher = gate.name in HIGHER_IS_BETTER
    t, low, high = gate.threshold, gate.low, gate.high
    if higher:
        to_pass = None if low is None else t - low
        to_fail = None if high is None else high - t
    else:
        to_pass = None if high is None else high - t
        to_fail = None if low is None else t - low
    out: dict[str, Any] = {
        "gate": str(gate.name), "verdict": str(gate.verdict), "n": gate.n, "min_samples": policy.min_samples,
        "estimate": gate.estimate, "low": low, "high": high, "threshold": t,
        "better": "higher" if higher else "lower", "to_pass": to_pass, "to_fail": to_fail,
        "expected_samples": _finite(expected.samples) if expected else None,
        "expected_seconds": _finite(expected.seconds) if expected else None,
        "verdict_in_sight": math.isfinite(expected.samples) if expected else None,
    }
    if gate.name is Gate.AGREEMENT:
        alpha, beta = error_budget(policy)
        d = policy.gates.agreement_indifference
        out["sprt"] = {"llr": _sprt_llr(evidence.comparisons, evidence.agreements, t, d),
                       "pass_at": -math.log(alpha), "fail_at": math.log(beta)}
    return out


def progress(info: Mapping[str, Any], policy: RolloutPolicy, evidence: StepEvidence, feedback: bool,
             now: float) -> dict[str, Any]:
    """The current step's gates, evaluated afresh, and when the loop can next act.

    `info` is `RolloutController.describe(route)`. A finished rollout (promoted, rolled back) has
    no gates: nothing will be decided any more.
    """
    phase = Phase(info["phase"])
    step_started, rollout_started = float(info["step_started_at"]), float(info["rollout_started_at"])
    timing = {"evaluated_at": now, "interval_s": policy.interval_s, "max_duration_s": policy.max_duration_s,
              "earliest_advance_at": step_started + policy.interval_s,
              "deadline_at": rollout_started + policy.max_duration_s, "on_timeout": str(policy.on_timeout),
              "on_failure": str(policy.on_failure)}
    if phase in TERMINAL:
        return {"final": True, "waiting_for": None, "gates": [], "timing": timing}
    state = RolloutState(phase, int(info["step_index"]), bool(info["approved"]))
    snapshot = Snapshot(state, evidence, now, step_started, rollout_started, shadowed=bool(info["shadowed"]),
                        feedback=feedback)
    gates = _evaluate(snapshot, policy)
    expected = {e.gate: e for e in gate_expectations(snapshot, policy)}
    return {"final": False, "waiting_for": _waiting_for(phase, gates),
            "gates": [gate_progress(g, policy, evidence, expected.get(g.name)) for g in gates], "timing": timing}


def _evaluate(snapshot: Snapshot, policy: RolloutPolicy) -> tuple[GateResult, ...]:
    """`evaluate_gates`, remembered: it reads only the evidence, the policy and whether the step is
    shadowed or has feedback, so a quiet route's gates are worked out once, not at every poll."""
    key = (snapshot.evidence, policy, snapshot.shadowed, snapshot.feedback)
    gates = _memo.get(key)
    if gates is None:
        if len(_memo) >= _MEMO_MAX:
            _memo.clear()
        gates = _memo[key] = evaluate_gates(snapshot, policy)
    return gates


def _waiting_for(phase: Phase, gates: tuple[GateResult, ...]) -> str:
    """What the next move waits for, in the loop's terms (see `decision.decide`)."""
    if phase is Phase.PAUSED:
        return "operator"  # resume, restart or roll back; the deadline does not run for the loop
    if phase is Phase.AWAITING_APPROVAL:
        return "approval"  # gates keep running: a failure still acts
    if not gates:
        return "evidence"  # no configured gate applies to this step
    if all(g.verdict is Verdict.PASS for g in gates):
        return "interval"  # every gate passes: the step advances once the interval has elapsed
    return "samples"
