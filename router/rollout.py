"""The rollout loop: applies `decision.decide` to each route's step window, and persists it all.

The statistics and transitions are pure (`router.decision`); this module owns what is not:
the clock, the state file, the decision log, the webhook, and turning a phase into the route's
candidate percentage. The step window's counters belong to the ledger: each tick reads a snapshot
of them, `decide`s, and applies the decision through the ledger (a new window, a driven split).

Evidence per step: with a shadow on the candidate, both sides come from mirrored requests (the
same requests went to both, so latency and errors are paired and agreement applies); without one,
from live traffic split between primary and candidate over the same window.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from router.config import Config, RolloutConfig, RouteConfig
from router.decision import (
    Action,
    Decision,
    InvalidTransition,
    OperatorAction,
    Phase,
    RolloutState,
    Snapshot,
    StepEvidence,
    decide,
    initial_state,
    operator_action,
)
from router.ledger import Ledger
from router.state import StateStore
from router.webhook import Webhook
from router.window import WindowCounters

log = logging.getLogger("router.rollout")

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

    def percent(self) -> float:
        if self.state.phase is Phase.ROLLED_BACK or self.primary_only:
            return 0.0
        return float(self.cfg.policy.steps[self.state.step_index])

    def to_json(self) -> dict[str, Any]:
        return {"key": list(self.key), "phase": str(self.state.phase), "step_index": self.state.step_index,
                "approved": self.state.approved, "step_started_at": self.step_started_at,
                "rollout_started_at": self.rollout_started_at, "last": self.last, "primary_only": self.primary_only}


def shadowed(route: RouteConfig) -> bool:
    return route.shadow is not None and route.shadow.backend == route.candidate


class RolloutController:
    """Runs every route's rollout: evaluates, applies, persists, logs and notifies."""

    def __init__(self, state_dir: Path, ledger: Ledger, store: StateStore | None = None) -> None:
        # A cluster injects its own store and log sink: state and log then live in Redis.
        self.store = store if store is not None else StateStore(state_dir, STATE_NAME)
        self.log_path = state_dir / LOG_NAME
        self.ledger = ledger
        self.routes: dict[str, RouteRollout] = {}
        self.problem: str | None = None
        self._saved: dict[str, Any] = self.store.load()
        if self.store.problem:
            self.problem = self.store.problem
        self.webhook = Webhook()
        self._last_persist = 0.0
        self.feedback = False
        self.log_sink: Callable[[dict[str, Any]], None] = self.append_log

    # -- configuration
    def configure(self, config: Config) -> None:
        """Routes with a rollout block keep their state unless the YAML changed primary or candidate."""
        now = time.time()
        self.feedback = config.monitoring.feedback is not None
        routes: dict[str, RouteRollout] = {}
        for route in config.routes:
            if route.rollout is None or route.candidate is None:
                continue
            key = (route.primary, route.candidate)
            current = self.routes.get(route.name)
            if current is not None and current.key == key:
                current.cfg = route.rollout
                routes[route.name] = self._fit(current, route, now)
                continue
            routes[route.name] = self._restore(route, route.rollout, key, now)
        self.routes = routes
        self.ledger.close_windows(routes)
        self.ledger.set_driven({name: rr.percent() for name, rr in routes.items()})

    def _restore(self, route: RouteConfig, cfg: RolloutConfig, key: tuple[str, str], now: float) -> RouteRollout:
        saved = self._saved.pop(route.name, None)
        if saved is not None:
            try:
                if tuple(saved["key"]) != key:
                    raise LookupError("the YAML changed its primary or candidate")
                state = RolloutState(Phase(saved["phase"]), int(saved["step_index"]), bool(saved["approved"]))
                started = float(saved["step_started_at"])
                window = WindowCounters.from_json(key, started, saved["counters"])
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
        self.ledger.open_window(route.name, WindowCounters(key, rr.shadowed, now))
        why = "; saved state unreadable: primary only until an operator acts" if primary_only else ""
        self._record(rr, Decision(Action.NONE, state, f"rollout of {key[1]} against {key[0]} starts at "
                                  f"{state.phase} step {state.step_index}{why}"), "router", now, StepEvidence())
        return rr

    def _fit(self, rr: RouteRollout, route: RouteConfig, now: float) -> RouteRollout:
        """A reload may change the steps: a state that no longer fits starts the rollout afresh."""
        policy = rr.cfg.policy
        on_last = rr.state.step_index == policy.last_step
        if not 0 <= rr.state.step_index <= policy.last_step or (rr.state.phase is Phase.PROMOTED) != on_last:
            return self._fresh(route, rr.cfg, rr.key, now, initial_state(policy))
        if rr.shadowed != shadowed(route):
            # Where the evidence comes from changed: the window so far measured something else.
            rr.shadowed = shadowed(route)
            rr.step_started_at = now
            self.ledger.open_window(rr.name, WindowCounters(rr.key, rr.shadowed, now))
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
            snapshot = Snapshot(rr.state, self.evidence(rr), now, rr.step_started_at, rr.rollout_started_at,
                                shadowed=rr.shadowed, feedback=self.feedback)
            decision = decide(snapshot, rr.cfg.policy)
            self.apply(rr, decision, "router", now)
        if now - self._last_persist >= PERSIST_EVERY_S:
            self.persist()

    def operator(self, route: str, action: OperatorAction) -> Decision:
        """An operator's command; InvalidTransition (HTTP 409) when the phase does not allow it."""
        rr = self.routes[route]
        decision = operator_action(rr.state, action, rr.cfg.policy)
        rr.primary_only = False  # an operator has acted
        self.apply(rr, decision, "operator", time.time())
        self.ledger.drive(rr.name, rr.percent())
        return decision

    def apply(self, rr: RouteRollout, decision: Decision, actor: str, now: float) -> None:
        changed = decision.state != rr.state
        before = rr.state
        evidence = self.evidence(rr)  # what the decision was made on, before a new window
        if decision.new_window:
            self.ledger.open_window(rr.name, WindowCounters(rr.key, rr.shadowed, now))
            rr.step_started_at = now
        if decision.restart_deadline:
            rr.rollout_started_at = now
        rr.state = decision.state
        if changed:
            self.ledger.drive(rr.name, rr.percent())
            log.warning("route %s: %s -> %s: %s", rr.name, before.phase, rr.state.phase, decision.reason)
        if decision.action is Action.NONE and actor == "router":
            return  # a finished rollout: nothing new to say
        # Holds are logged once per interval, with their evidence; everything else always.
        hold = decision.action is Action.HOLD and not changed and actor == "router"
        if hold and now - rr.last_logged_hold < max(rr.cfg.policy.interval_s, 1.0):
            return
        if hold:
            rr.last_logged_hold = now
        self._record(rr, decision, actor, now, evidence, before=before)
        if changed or actor == "operator":
            self.persist()
            self._notify(rr, before, decision, actor)

    def _record(self, rr: RouteRollout, decision: Decision, actor: str, now: float, ev: StepEvidence,
                before: RolloutState | None = None) -> None:
        entry = {
            "time": now, "route": rr.name, "actor": actor, "action": str(decision.action),
            "from": {"phase": str(before.phase), "step": before.step_index} if before else None,
            "phase": str(decision.state.phase), "step": decision.state.step_index,
            "candidate_percent": rr.percent(),
            "reason": decision.reason,
            "evidence": {"comparisons": ev.comparisons, "agreements": ev.agreements,
                         "primary": {"requests": ev.primary.requests, "errors": ev.primary.errors},
                         "candidate": {"requests": ev.candidate.requests, "errors": ev.candidate.errors}},
            "gates": [{"gate": str(g.name), "verdict": str(g.verdict), "estimate": g.estimate, "low": g.low,
                       "high": g.high, "threshold": g.threshold, "n": g.n} for g in decision.gates],
        }
        rr.last = entry
        self.log_sink(entry)

    def append_log(self, entry: dict[str, Any]) -> None:
        try:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            with self.log_path.open("a", encoding="utf-8") as f:
                f.write(json.dumps(entry) + "\n")
        except OSError as exc:
            log.error("cannot append to the decision log %s: %s", self.log_path, exc)

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
        """The last `n` decision-log entries of a route."""
        try:
            lines = self.log_path.read_text(encoding="utf-8").splitlines()
        except OSError:
            return []
        out: list[dict[str, Any]] = []
        for line in reversed(lines):
            with contextlib.suppress(json.JSONDecodeError):
                entry = json.loads(line)
                if entry.get("route") == route:
                    out.append(entry)
                    if len(out) >= n:
                        break
        return out[::-1]

    def describe(self, route: str) -> dict[str, Any] | None:
        rr = self.routes.get(route)
        if rr is None:
            return None
        policy = rr.cfg.policy
        ev = self.evidence(rr)
        return {
            "route": route, "primary": rr.key[0], "candidate": rr.key[1],
            "phase": str(rr.state.phase), "step_index": rr.state.step_index, "steps": list(policy.steps),
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
    def _notify(self, rr: RouteRollout, before: RolloutState, decision: Decision, actor: str) -> None:
        url = rr.cfg.notify
        if url is None or (before == decision.state and actor != "operator"):
            return
        payload = {"route": rr.name, "from_phase": str(before.phase), "phase": str(decision.state.phase),
                   "step": decision.state.step_index, "candidate_percent": rr.percent(),
                   "reason": decision.reason, "actor": actor, "time": time.time()}
        self.webhook.post(url, payload)

    async def close(self) -> None:
        self.persist()
        await self.webhook.close()
