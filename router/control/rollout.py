"""The rollout loop: applies `decision.decide` to each route's step window, and persists it all.

The statistics and transitions are pure (`router.analysis.decision`); this module owns what is not:
the clock, the state file, the decision log, the webhook, and turning a phase into the route's
candidate percentage. The step window's counters belong to the ledger: each tick reads a snapshot
of them, `decide`s, and applies the decision through the ledger (a new window, a driven split).

Evidence per step: with a shadow on the candidate, both sides come from mirrored requests (the
same requests went to both, so latency and errors are paired and agreement applies); without one,
from live traffic split between primary and candidate over the same window.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from router.analysis.decision import (
    Action,
    Decision,
    InvalidTransition,
    OperatorAction,
    Phase,
    RolloutState,
    Snapshot,
    StepEvidence,
    Verdict,
    decide,
    fits,
    initial_state,
    operator_action,
)
from router.config import Config, RolloutConfig, RouteConfig
from router.control.decisionlog import DecisionLog
from router.control.ledger import Ledger
from router.control.lifecycle import completes, fields_text, mirror_stop, reverse_of, top_fields
from router.control.state import StateStore
from router.control.steps import step_label
from router.control.window import WindowCounters, latency_factors
from router.observe.webhook import Webhook

log = logging.getLogger("router.control.rollout")

__all__ = ["InvalidTransition", "RolloutController"]

LOG_NAME = "decisions.jsonl"
STATE_NAME = "rollouts.json"
PERSIST_EVERY_S = 5.0


@dataclass
class RouteRollout:
    """One route's rollout: its policy, where it stands, and the evidence of the current step."""

    name: str
    cfg: RolloutConfig
    key: tuple[str, str]  # (primary, candidate): a YAML change of either starts a new rollout
    state: RolloutState
    shadowed: bool  # evidence from mirrored pairs (shadow = candidate), else from the live split
    step_started_at: float
    rollout_started_at: float
    last: dict[str, Any] = field(default_factory=dict)  # the last decision, as logged
    last_logged_hold: float = 0.0
    primary_only: bool = False  # state was unreadable: primary only, paused, until an operator acts
    # The YAML made the promoted candidate the primary: the rollout is over, and the candidate now
    # named (the former primary, kept at hand) gets nothing until the YAML asks for a new rollout.
    completed: bool = False

    @property
    def phase(self) -> str:
        return "completed" if self.completed else str(self.state.phase)

    def percent(self) -> float:
        if self.state.phase is Phase.ROLLED_BACK or self.primary_only or self.completed:
            return 0.0
        return float(self.cfg.policy.steps[self.state.step_index])

    def to_json(self) -> dict[str, Any]:
        return {"key": list(self.key), "phase": str(self.state.phase), "step_index": self.state.step_index,
                "approved": self.state.approved, "step_started_at": self.step_started_at,
                "rollout_started_at": self.rollout_started_at, "last": self.last, "primary_only": self.primary_only,
                "completed": self.completed}


def shadowed(route: RouteConfig) -> bool:
    return route.shadow is not None and route.shadow.backend == route.candidate


class RolloutController:
    """Runs every route's rollout: evaluates, applies, persists, logs and notifies."""

    def __init__(self, state_dir: Path, ledger: Ledger, store: StateStore | None = None) -> None:
        # A cluster injects its own store and log sink: state and log then live in Redis.
        self.store = store if store is not None else StateStore(state_dir, STATE_NAME)
        self.log_path = state_dir / LOG_NAME
        self.decisions = DecisionLog(self.log_path)
        self.ledger = ledger
        self.routes: dict[str, RouteRollout] = {}
        self.problem: str | None = None
        self._saved: dict[str, Any] = self.store.load()
        if self.store.problem:
            self.problem = self.store.problem
        self.webhook = Webhook()
        self._last_persist = 0.0
        self.feedback = False
        self._route_cfg: dict[str, RouteConfig] = {}
        self.log_sink: Callable[[dict[str, Any]], None] = self.append_log

    # -- configuration
    def configure(self, config: Config) -> None:
        """Routes with a rollout block keep their state unless the YAML changed primary or candidate."""
        now = time.time()
        self.feedback = config.monitoring.feedback is not None
        routes: dict[str, RouteRollout] = {}
        for route in config.routes:
            current = self.routes.get(route.name)
            finished = current is not None and not current.completed and \
                completes(current.key, current.state.phase, route.primary)
            if finished:
                assert current is not None
                self._complete(current, now)
            if route.rollout is not None and route.candidate is not None:
                routes[route.name] = self._configured(route, route.rollout, current, finished, now)
        self._route_cfg = {route.name: route for route in config.routes}
        self.routes = routes
        self.ledger.close_windows(name for name, rr in routes.items() if not rr.completed)
        self.ledger.set_driven({name: rr.percent() for name, rr in routes.items()})
        self._sync_mirroring()

    def _configured(self, route: RouteConfig, cfg: RolloutConfig, current: RouteRollout | None, finished: bool,
                    now: float) -> RouteRollout:
        key = (route.primary, route.candidate or "")
        if current is not None and current.key == key:
            current.cfg = cfg
            return current if current.completed else self._fit(current, route, now)
        if finished and current is not None and reverse_of(current.key, key):
            return self._completed(route, cfg, key, now, current.last)
        return self._restore(route, cfg, key, now)

    def _complete(self, rr: RouteRollout, now: float) -> None:
        """Record that the YAML made the promoted candidate the primary: the rollout is over.
        Never a new rollout: the candidate the YAML names now (the old primary) gets no traffic."""
        primary, candidate = rr.key
        self._append(rr, {"time": now, "route": rr.name, "actor": "router", "action": "complete",
                          "from": {"phase": str(rr.state.phase), "step": rr.state.step_index},
                          "phase": "completed", "step": rr.state.step_index, "candidate_percent": 0.0,
                          "reason": f"{candidate} is the primary now (was {primary}): the rollout is complete"})
        log.info("route %s: rollout complete: %s is the primary now", rr.name, candidate)

    def _completed(self, route: RouteConfig, cfg: RolloutConfig, key: tuple[str, str], now: float,
                   last: dict[str, Any] | None = None) -> RouteRollout:
        """The finished rollout, kept so that the swapped-in candidate (the old primary) gets no traffic."""
        state = RolloutState(Phase.PROMOTED, cfg.policy.last_step, True)
        return RouteRollout(route.name, cfg, key, state, shadowed(route), now, now, dict(last or {}), completed=True)

    def _sync_mirroring(self) -> None:
        """Tell the ledger which routes' shadows stop getting copies (their rollout ended)."""
        stops: dict[str, str] = {}
        for name, rr in self.routes.items():
            route = self._route_cfg.get(name)
            why = mirror_stop(route, rr.phase) if route is not None else None
            if why is not None:
                stops[name] = why
        self.ledger.set_mirror_stops(stops)

    def _restore(self, route: RouteConfig, cfg: RolloutConfig, key: tuple[str, str], now: float) -> RouteRollout:
        saved = self._saved.pop(route.name, None)
        if saved is not None:
            try:
                state = RolloutState(Phase(saved["phase"]), int(saved["step_index"]), bool(saved["approved"]))
                old_key = (str(saved["key"][0]), str(saved["key"][1]))
                if old_key != key and completes(old_key, state.phase, key[0]) and reverse_of(old_key, key):
                    # Finished in the YAML while the router was down.
                    old = RouteRollout(route.name, cfg, old_key, state, False, now, now)
                    self._complete(old, now)
                    return self._completed(route, cfg, key, now, old.last)
                if old_key != key:
                    raise LookupError("the YAML changed its primary or candidate")
                if saved.get("completed"):
                    return self._completed(route, cfg, key, now, dict(saved.get("last", {})))
                started = float(saved["step_started_at"])
                window = WindowCounters.from_json(key, started, saved["counters"], cfg.count_4xx,
                                                  latency_factors(cfg.policy))
                rr = RouteRollout(route.name, cfg, key, state, window.shadowed, started,
                                  float(saved["rollout_started_at"]), dict(saved.get("last", {})),
                                  primary_only=bool(saved.get("primary_only", False)))
                self.ledger.open_window(route.name, window)
                return self._fit(rr, route, now)
            except LookupError as exc:
                log.info("route %s: starting a new rollout: %s", route.name, exc)
            except (KeyError, TypeError, ValueError) as exc:
                self.problem = f"route {route.name}: saved rollout state unreadable ({exc}); serving primary only"
                log.error("%s", self.problem)
                return self._fresh(route, cfg, key, now, RolloutState(Phase.PAUSED, 0), primary_only=True)
        elif self.store.problem:
            # The file was unreadable: never guess where a rollout stood; primary only, paused.
            return self._fresh(route, cfg, key, now, RolloutState(Phase.PAUSED, 0), primary_only=True)
        return self._fresh(route, cfg, key, now, initial_state(cfg.policy))

    def _fresh(self, route: RouteConfig, cfg: RolloutConfig, key: tuple[str, str], now: float,
               state: RolloutState, *, primary_only: bool = False) -> RouteRollout:
        rr = RouteRollout(route.name, cfg, key, state, shadowed(route), now, now, primary_only=primary_only)
        self.ledger.open_window(route.name, WindowCounters(key, rr.shadowed, now, cfg.count_4xx,
                                                                   latency_factors(cfg.policy)))
        why = "; saved state unreadable: primary only until an operator acts" if primary_only else ""
        where = step_label(state.step_index, cfg.policy.steps)
        self._record(rr, Decision(Action.NONE, state, f"rollout of {key[1]} against {key[0]} starts at "
                                  f"{state.phase} {where}{why}"), "router", now, StepEvidence())
        return rr

    def _fit(self, rr: RouteRollout, route: RouteConfig, now: float) -> RouteRollout:
        """A reload may change the steps: a state that no longer fits starts the rollout afresh."""
        policy = rr.cfg.policy
        if not fits(rr.state, policy):
            return self._fresh(route, rr.cfg, rr.key, now, initial_state(policy))
        if rr.shadowed != shadowed(route):
            # Where the evidence comes from changed: the window so far measured something else.
            rr.shadowed = shadowed(route)
            rr.step_started_at = now
            self.ledger.open_window(rr.name, WindowCounters(rr.key, rr.shadowed, now, rr.cfg.count_4xx,
                                                                   latency_factors(rr.cfg.policy)))
        return rr

    def evidence(self, rr: RouteRollout) -> StepEvidence:
        return self.ledger.evidence(rr.name) or StepEvidence()

    # -- the loop
    async def run(self) -> None:
        while True:
            intervals = [rr.cfg.policy.interval_s for rr in self.routes.values()] or [1.0]
            await asyncio.sleep(min(1.0, max(0.1, min(intervals) / 4)))
            self.tick()

    def tick(self, now: float | None = None) -> None:
        now = time.time() if now is None else now
        for rr in list(self.routes.values()):
            if rr.completed:
                continue
            snapshot = Snapshot(rr.state, self.evidence(rr), now, rr.step_started_at, rr.rollout_started_at,
                                shadowed=rr.shadowed, feedback=self.feedback,
                                llm=self.ledger.llm_evidence(rr.name))
            decision = decide(snapshot, rr.cfg.policy)
            self.apply(rr, decision, "router", now)
        if now - self._last_persist >= PERSIST_EVERY_S:
            self.persist()

    def operator(self, route: str, action: OperatorAction, who: str | None = None,
                 why: str | None = None) -> Decision:
        """An operator's command; InvalidTransition (HTTP 409) when the phase does not allow it.
        `who` and `why` go into the reason, the decision log and the webhook."""
        rr = self.routes[route]
        if rr.completed:
            raise InvalidTransition(
                f"cannot {action} a rollout that is completed: {rr.key[0]} is the primary now; to roll out "
                "another model, name it as the candidate in the YAML and reload")
        decision = operator_action(rr.state, action, rr.cfg.policy, by=who or "an operator")
        if why:
            decision = replace(decision, reason=f"{decision.reason}: {why}")
        rr.primary_only = False  # an operator has acted
        self.apply(rr, decision, "operator", time.time(), {"actor": who, "reason": why})
        self.ledger.drive(rr.name, rr.percent())
        return decision

    def apply(self, rr: RouteRollout, decision: Decision, actor: str, now: float,
              operator: dict[str, str | None] | None = None) -> None:
        changed = decision.state != rr.state
        before = rr.state
        evidence = self.evidence(rr)  # what the decision was made on, before a new window
        output = self.ledger.llm_output(rr.name)
        top = self._top_fields(rr, decision)
        if top:
            decision = replace(decision, reason=f"{decision.reason}; most disagreeing fields: {fields_text(top)}")
        if decision.new_window:
            self.ledger.open_window(rr.name, WindowCounters(rr.key, rr.shadowed, now, rr.cfg.count_4xx,
                                                                   latency_factors(rr.cfg.policy)))
            rr.step_started_at = now
        if decision.restart_deadline:
            rr.rollout_started_at = now
        rr.state = decision.state
        if changed:
            self.ledger.drive(rr.name, rr.percent())
            self._sync_mirroring()
            # Promotions and steps forward are news; rollbacks and pauses (failures, timeouts) need a look.
            level = logging.WARNING if rr.state.phase in (Phase.ROLLED_BACK, Phase.PAUSED) else logging.INFO
            log.log(level, "route %s: %s -> %s: %s", rr.name, before.phase, rr.state.phase, decision.reason)
        if decision.action is Action.NONE and actor == "router":
            return  # a finished rollout: nothing new to say
        # Holds are logged once per interval, with their evidence; everything else always.
        hold = decision.action is Action.HOLD and not changed and actor == "router"
        if hold and now - rr.last_logged_hold < max(rr.cfg.policy.interval_s, 1.0):
            return
        if hold:
            rr.last_logged_hold = now
        self._record(rr, decision, actor, now, evidence, before=before, operator=operator, top=top, output=output)
        if changed or actor == "operator":
            self.persist()
            self._notify(rr, before, decision, actor, operator)

    def _top_fields(self, rr: RouteRollout, decision: Decision) -> list[dict[str, Any]]:
        """The most disagreeing fields, for a decision that stops or fails the rollout of a shadowed candidate."""
        failing = decision.action is Action.ROLLBACK or any(g.verdict is Verdict.FAIL for g in decision.gates)
        return top_fields(self.ledger.shadow_stats(rr.name)) if failing and rr.shadowed else []

    def _record(self, rr: RouteRollout, decision: Decision, actor: str, now: float, ev: StepEvidence,
                before: RolloutState | None = None, operator: dict[str, str | None] | None = None,
                top: list[dict[str, Any]] | None = None, output: dict[str, float | None] | None = None) -> None:
        steps = rr.cfg.policy.steps
        entry = {
            "time": now, "route": rr.name, "actor": actor, "action": str(decision.action),
            "from": {"phase": str(before.phase), "step": before.step_index} if before else None,
            "phase": str(decision.state.phase), "step": decision.state.step_index,
            "step_label": step_label(decision.state.step_index, steps),
            "candidate_percent": rr.percent(),
            "reason": decision.reason,
            "evidence": {"comparisons": ev.comparisons, "agreements": ev.agreements,
                         "primary": {"requests": ev.primary.requests, "errors": ev.primary.errors},
                         "candidate": {"requests": ev.candidate.requests, "errors": ev.candidate.errors},
                         "top_disagreeing_fields": top or [],
                         "output_tokens": output or self.ledger.llm_output(rr.name)},
            "gates": [g.to_json() for g in decision.gates],
        }
        if operator is not None:
            entry["operator"] = operator
        self._append(rr, entry)

    def _append(self, rr: RouteRollout, entry: dict[str, Any]) -> None:
        rr.last = entry
        self.log_sink(entry)

    def append_log(self, entry: dict[str, Any]) -> None:
        """The local decision log (rotated; a cluster replaces `log_sink` with its shared log)."""
        self.decisions.append(entry)

    # -- persistence
    def persist(self) -> None:
        self._last_persist = time.time()
        data = {name: {**rr.to_json(), "counters": self.ledger.window_json(name, rr.key, rr.shadowed)}
                for name, rr in self.routes.items()}
        try:
            self.store.save(data)
        except OSError as exc:
            log.error("cannot save rollout state to %s: %s", self.store.path, exc)

    def tail(self, route: str, n: int) -> list[dict[str, Any]]:
        """The last `n` decision-log entries of a route. Reads the disk: call it off the event loop."""
        return self.decisions.tail(route, n)

    def describe(self, route: str) -> dict[str, Any] | None:
        rr = self.routes.get(route)
        if rr is None:
            return None
        policy = rr.cfg.policy
        ev = self.evidence(rr)
        return {
            "route": route, "primary": rr.key[0], "candidate": rr.key[1],
            "phase": rr.phase, "step_index": rr.state.step_index, "steps": list(policy.steps),
            "step_label": step_label(rr.state.step_index, policy.steps),
            "mirroring_stopped": self.ledger.mirror_stopped.get(route),
            "candidate_percent": rr.percent(), "approved": rr.state.approved, "approval_required": policy.approval,
            "primary_only": rr.primary_only,
            "step_started_at": rr.step_started_at, "rollout_started_at": rr.rollout_started_at,
            "shadowed": rr.shadowed,
            "window": {"comparisons": ev.comparisons, "agreements": ev.agreements,
                       "primary": {"requests": ev.primary.requests, "errors": ev.primary.errors},
                       "candidate": {"requests": ev.candidate.requests, "errors": ev.candidate.errors}},
            "last_decision": rr.last,
        }

    # -- webhook
    def _notify(self, rr: RouteRollout, before: RolloutState, decision: Decision, actor: str,
                operator: dict[str, str | None] | None = None) -> None:
        url = rr.cfg.notify
        if url is None or (before == decision.state and actor != "operator"):
            return
        payload = {"route": rr.name, "from_phase": str(before.phase), "phase": str(decision.state.phase),
                   "step": decision.state.step_index,
                   "step_label": step_label(decision.state.step_index, rr.cfg.policy.steps),
                   "candidate_percent": rr.percent(), "reason": decision.reason, "actor": actor,
                   "operator": operator, "time": time.time()}
        self.webhook.post(url, payload)

    async def close(self) -> None:
        self.persist()
        await self.webhook.close()
