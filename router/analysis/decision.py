"""The pure decision core of automatic rollouts: phases and transitions over the gates' verdicts.

`decide(snapshot, policy)` reads the summed counters of the current step window and returns a
`Decision`; operator commands go through `operator_action`. Nothing here does I/O or reads a clock,
so the loop, persistence and HTTP layers only apply what these functions return. The vocabulary
(policy, evidence, results) is in `router.analysis.rollout_types` and the statistics in `router.analysis.gates`;
both are re-exported here, where the rest of the router has always found them.
"""

from __future__ import annotations

from router.analysis.gates import (
    accuracy_gate,
    agreement_gate,
    error_rate_gate,
    evaluate_gates,
    judge_gate,
    latency_gate,
    llm_gates,
)
from router.analysis.rollout_types import (
    BUCKET_FACTOR,
    EMPTY_HISTOGRAM,
    LATENCY_BUCKETS_S,
    TERMINAL,
    Action,
    Decision,
    Gate,
    GateResult,
    Gates,
    InvalidTransition,
    LlmEvidence,
    OperatorAction,
    PairedLatency,
    Phase,
    RolloutPolicy,
    RolloutState,
    SideCounts,
    Snapshot,
    StepEvidence,
    Verdict,
    error_budget,
    latency_histogram,
)
from router.control.steps import step_label

__all__ = [
    "BUCKET_FACTOR",
    "EMPTY_HISTOGRAM",
    "LATENCY_BUCKETS_S",
    "TERMINAL",
    "Action",
    "Decision",
    "Gate",
    "GateResult",
    "Gates",
    "InvalidTransition",
    "LlmEvidence",
    "OperatorAction",
    "PairedLatency",
    "Phase",
    "RolloutPolicy",
    "RolloutState",
    "SideCounts",
    "Snapshot",
    "StepEvidence",
    "Verdict",
    "accuracy_gate",
    "agreement_gate",
    "decide",
    "error_budget",
    "error_rate_gate",
    "evaluate_gates",
    "fits",
    "initial_state",
    "is_timed_out",
    "judge_gate",
    "latency_gate",
    "latency_histogram",
    "llm_gates",
    "next_step",
    "operator_action",
    "should_advance",
]


# -- transitions --------------------------------------------------------------------------------


def initial_state(policy: RolloutPolicy) -> RolloutState:
    return RolloutState(_phase_at(0, policy))


def _phase_at(step: int, policy: RolloutPolicy) -> Phase:
    return Phase.SHADOWING if policy.steps[step] == 0 else Phase.PROGRESSING


def fits(state: RolloutState, policy: RolloutPolicy) -> bool:
    """Only a promoted rollout, or one rolled back after its promotion (it keeps the step it was
    rolled back from), sits on the last step; a promoted one always does."""
    if not 0 <= state.step_index <= policy.last_step:
        return False
    if state.step_index == policy.last_step:
        return state.phase in TERMINAL
    return state.phase is not Phase.PROMOTED


def _checked(state: RolloutState, policy: RolloutPolicy) -> RolloutState:
    if not fits(state, policy):
        raise ValueError(f"{state.phase} at step {state.step_index} does not fit the steps {policy.steps}")
    return state


def _where(state: RolloutState, policy: RolloutPolicy) -> str:
    return step_label(state.step_index, policy.steps)


def _stay(state: RolloutState, action: Action, reason: str, gates: tuple[GateResult, ...] = ()) -> Decision:
    return Decision(action, state, reason, gates)


def _halt(action: Action, state: RolloutState, gates: tuple[GateResult, ...], why: str) -> Decision:
    phase = Phase.ROLLED_BACK if action is Action.ROLLBACK else Phase.PAUSED
    return Decision(action, RolloutState(phase, state.step_index, state.approved), f"{why}: {action}", gates)


def should_advance(snapshot: Snapshot, policy: RolloutPolicy, gates: tuple[GateResult, ...]) -> bool:
    """Every applicable gate passes (and at least one applies) and the interval has elapsed."""
    elapsed = snapshot.now - snapshot.step_started_at
    return bool(gates) and all(g.verdict is Verdict.PASS for g in gates) and elapsed >= policy.interval_s


def is_timed_out(snapshot: Snapshot, policy: RolloutPolicy) -> bool:
    return snapshot.now - snapshot.rollout_started_at >= policy.max_duration_s


def next_step(state: RolloutState, policy: RolloutPolicy, gates: tuple[GateResult, ...], why: str,
              approved: bool = False) -> Decision:
    """Move one step on: the step before the last waits for approval if the policy asks for it
    (unless given), and moving onto the last step is the promotion."""
    target = state.step_index + 1
    if target == policy.last_step and policy.approval and not (approved or state.approved):
        return Decision(Action.AWAIT_APPROVAL, RolloutState(Phase.AWAITING_APPROVAL, state.step_index),
                        f"{why}; waiting for an operator to approve {step_label(target, policy.steps)}", gates)
    if target == policy.last_step:
        return Decision(Action.PROMOTE, RolloutState(Phase.PROMOTED, target, state.approved or approved),
                        f"{why}; promoted", gates)
    return Decision(Action.ADVANCE, RolloutState(_phase_at(target, policy), target, state.approved),
                    f"{why}; advance to {step_label(target, policy.steps)}", gates, new_window=True)


def _hold_reason(snapshot: Snapshot, policy: RolloutPolicy, gates: tuple[GateResult, ...]) -> str:
    where = _where(snapshot.state, policy)
    if not gates:
        return f"holding at {where}: no configured gate applies (no shadow, no traffic evidence)"
    open_gates = [str(g) for g in gates if g.verdict is not Verdict.PASS]
    if open_gates:
        return f"holding at {where}, collecting: " + "; ".join(open_gates)
    elapsed = snapshot.now - snapshot.step_started_at
    return f"holding at {where}: gates pass, {elapsed:.0f}s of the {policy.interval_s:g}s interval elapsed"


def decide(snapshot: Snapshot, policy: RolloutPolicy) -> Decision:
    """The next move for one route, from the evidence of the current step window.

    A failure acts at once (no need to wait out the interval to stop a bad candidate); advancing
    needs every gate to pass and the interval to have elapsed; otherwise hold until max_duration.
    While awaiting approval the gates keep running (Ville's bound covers looking on), but the
    deadline does not: the wait is the operator's, not the candidate's.
    """
    state = _checked(snapshot.state, policy)
    if state.phase in TERMINAL:
        return _stay(state, Action.NONE, f"{state.phase}: final; only an operator can act")
    if state.phase is Phase.PAUSED:
        return _stay(state, Action.HOLD, f"paused at {_where(state, policy)}: resume, restart or roll back")
    gates = evaluate_gates(snapshot, policy)
    failed = [str(g) for g in gates if g.verdict is Verdict.FAIL]
    if failed:
        return _halt(policy.on_failure, state, gates, f"failed at {_where(state, policy)}: " + "; ".join(failed))
    if state.phase is Phase.AWAITING_APPROVAL:
        if state.approved:
            return next_step(state, policy, gates, "approved by an operator")
        return _stay(state, Action.HOLD, f"awaiting approval at {_where(state, policy)}", gates)
    if should_advance(snapshot, policy, gates):
        return next_step(state, policy, gates, f"all gates pass at {_where(state, policy)}")
    if is_timed_out(snapshot, policy):
        why = f"no decision within max_duration {policy.max_duration_s:g}s; {_hold_reason(snapshot, policy, gates)}"
        return _halt(policy.on_timeout, state, gates, why)
    return _stay(state, Action.HOLD, _hold_reason(snapshot, policy, gates), gates)


def operator_action(state: RolloutState, action: OperatorAction, policy: RolloutPolicy, *,
                    by: str = "an operator") -> Decision:
    """Apply an operator command; InvalidTransition (naming what would work) when the phase does not allow it.

    Rollback is the emergency lever: it works in every phase, promoted included, and sends all
    traffic to the primary at once. Everything else after a promotion is refused: the rollout is
    over, and what is left is to finalize it in the YAML or to roll it back.
    """
    phase, live = _checked(state, policy).phase, state.phase in {Phase.SHADOWING, Phase.PROGRESSING}
    if action in (OperatorAction.PROMOTE, OperatorAction.APPROVE) and phase is Phase.AWAITING_APPROVAL:
        return next_step(state, policy, (), f"approved by {by}", approved=True)
    if action is OperatorAction.PROMOTE and live:
        return next_step(state, policy, (), f"{by} skipped the analysis at {_where(state, policy)}", approved=True)
    if action is OperatorAction.APPROVE and (live or phase is Phase.PAUSED):
        return Decision(Action.NONE, RolloutState(phase, state.step_index, True), "last step approved in advance")
    if action is OperatorAction.ROLLBACK and phase is not Phase.ROLLED_BACK:
        return _halt(Action.ROLLBACK, state, (), f"rolled back by {by} from {phase} at {_where(state, policy)}")
    if action is OperatorAction.PAUSE and (live or phase is Phase.AWAITING_APPROVAL):
        return _halt(Action.PAUSE, state, (), f"paused by {by}")
    if action is OperatorAction.RESUME and phase is Phase.PAUSED:
        resumed = RolloutState(_phase_at(state.step_index, policy), state.step_index, state.approved)
        return Decision(Action.RESUME, resumed, f"resumed at {_where(state, policy)} with fresh evidence",
                        new_window=True, restart_deadline=True)
    if action is OperatorAction.RESTART and phase in (Phase.PAUSED, Phase.ROLLED_BACK):
        return Decision(Action.RESTART, initial_state(policy), f"restarted from the first step by {by}",
                        new_window=True, restart_deadline=True)
    why, suggest = _refusal(phase, action)
    raise InvalidTransition(f"cannot {action} a rollout that is {phase}: {why}", suggest)


def _refusal(phase: Phase, action: OperatorAction) -> tuple[str, tuple[str, ...]]:
    """Why an action is refused in a phase, and the commands that do work there."""
    if phase is Phase.ROLLED_BACK:
        if action is OperatorAction.ROLLBACK:
            return "all traffic is already on the primary", ("restart",)
        return "start it again from the first step with restart", ("restart",)
    if phase is Phase.PROMOTED:
        return ("the candidate is promoted; make it the primary in the YAML (finalize), or roll back to send "
                "all traffic to the primary", ("finalize", "rollback"))
    if phase is Phase.PAUSED:
        return "it is paused; resume it, restart it from the first step, or roll it back", ("resume", "restart",
                                                                                              "rollback")
    if action is OperatorAction.RESTART:
        return "it is still running; pause or roll it back first", ("pause", "rollback")
    return "it is not paused; pause, promote or roll back", ("pause", "promote", "rollback")
