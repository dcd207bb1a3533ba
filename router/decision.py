"""The pure decision core of automatic rollouts: phases and transitions over the gates' verdicts.

`decide(snapshot, policy)` reads the summed counters of the current step window and returns a
`Decision`; operator commands go through `operator_action`. Nothing here does I/O or reads a clock,
so the loop, persistence and HTTP layers only apply what these functions return. The vocabulary
(policy, evidence, results) is in `router.rollout_types` and the statistics in `router.gates`;
both are re-exported here, where the rest of the router has always found them.
"""

from __future__ import annotations

from router.gates import accuracy_gate, agreement_gate, error_rate_gate, evaluate_gates, latency_gate
from router.rollout_types import (
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
    OperatorAction,
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

__all__ = [
    "BUCKET_FACTOR", "EMPTY_HISTOGRAM", "LATENCY_BUCKETS_S", "TERMINAL", "Action", "Decision", "Gate",
    "GateResult", "Gates", "InvalidTransition", "OperatorAction", "Phase", "RolloutPolicy", "RolloutState",
    "SideCounts", "Snapshot", "StepEvidence", "Verdict", "accuracy_gate", "agreement_gate", "decide",
    "error_budget", "error_rate_gate", "evaluate_gates", "initial_state", "is_timed_out", "latency_gate",
    "latency_histogram", "next_step", "operator_action", "should_advance",
]


# -- transitions --------------------------------------------------------------------------------


def initial_state(policy: RolloutPolicy) -> RolloutState:
    return RolloutState(_phase_at(0, policy))


def _phase_at(step: int, policy: RolloutPolicy) -> Phase:
    return Phase.SHADOWING if policy.steps[step] == 0 else Phase.PROGRESSING


def _checked(state: RolloutState, policy: RolloutPolicy) -> RolloutState:
    """A state that fits the policy: a promoted rollout sits on the last step, no other one does."""
    on_last = state.step_index == policy.last_step
    if (state.phase is Phase.PROMOTED) != on_last or not 0 <= state.step_index <= policy.last_step:
        raise ValueError(f"{state.phase} at step {state.step_index} does not fit the steps {policy.steps}")
    return state


def _where(state: RolloutState, policy: RolloutPolicy) -> str:
    return f"step {state.step_index} ({policy.steps[state.step_index]:g}%)"


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
                        f"{why}; waiting for an operator to approve step {target}", gates)
    if target == policy.last_step:
        return Decision(Action.PROMOTE, RolloutState(Phase.PROMOTED, target, state.approved or approved),
                        f"{why}; promoted", gates)
    return Decision(Action.ADVANCE, RolloutState(_phase_at(target, policy), target, state.approved),
                    f"{why}; advance to step {target} ({policy.steps[target]:g}%)", gates, new_window=True)


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


def operator_action(state: RolloutState, action: OperatorAction, policy: RolloutPolicy) -> Decision:
    """Apply an operator command; InvalidTransition when the phase does not allow it."""
    phase, live = _checked(state, policy).phase, state.phase in {Phase.SHADOWING, Phase.PROGRESSING}
    if action in (OperatorAction.PROMOTE, OperatorAction.APPROVE) and phase is Phase.AWAITING_APPROVAL:
        return next_step(state, policy, (), "approved by an operator", approved=True)
    if action is OperatorAction.PROMOTE and live:
        return next_step(state, policy, (), f"operator skipped the analysis at {_where(state, policy)}", approved=True)
    if action is OperatorAction.APPROVE and (live or phase is Phase.PAUSED):
        return Decision(Action.NONE, RolloutState(phase, state.step_index, True), "last step approved in advance")
    if action is OperatorAction.ROLLBACK and phase not in TERMINAL:
        return _halt(Action.ROLLBACK, state, (), "rolled back by an operator")
    if action is OperatorAction.PAUSE and (live or phase is Phase.AWAITING_APPROVAL):
        return _halt(Action.PAUSE, state, (), "paused by an operator")
    if action is OperatorAction.RESUME and phase is Phase.PAUSED:
        resumed = RolloutState(_phase_at(state.step_index, policy), state.step_index, state.approved)
        return Decision(Action.RESUME, resumed, f"resumed at {_where(state, policy)} with fresh evidence",
                        new_window=True, restart_deadline=True)
    if action is OperatorAction.RESTART and phase in (Phase.PAUSED, Phase.ROLLED_BACK):
        return Decision(Action.RESTART, initial_state(policy), "restarted from the first step",
                        new_window=True, restart_deadline=True)
    raise InvalidTransition(f"cannot {action} a rollout that is {phase}")
