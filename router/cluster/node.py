"""One member of a cluster: joins, follows the shared state, and decides when it leads.

`Member.run` is one loop (every `TURN_S`):
- renew or take the lease (every third of its TTL);
- apply a new version of the shared document as soon as it appears (pub/sub wakes the loop,
  polling the version is the fallback), so every member serves a new split within a second;
- flush this process's window counts and read the cluster sums (every `FLUSH_S`);
- heartbeat into the member list (`GET /-/cluster`);
- if it is the leader, run the rollout controller's tick on the summed evidence and write the
  result with a compare-and-set on its epoch and the version it read; a refused write is logged,
  counted and never applied (the driven percentages wait for the accepted write).
Redis being down only stops the lease, the flush and the decisions: the data path keeps serving
with the last state it applied ("fail static").
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from router.analysis.decision import Decision, OperatorAction, Phase, RolloutState
from router.cluster.lease import Lease
from router.cluster.members import Members
from router.cluster.predictions import SharedPredictions
from router.cluster.shadow_share import SharedShadow
from router.cluster.shared_ledger import SharedLedger
from router.cluster.store import Store, StoreDown
from router.cluster.sync import SharedState, StateDoc, StateProblem, WriteResult
from router.config import Config, RouteConfig
from router.control.rollout import RolloutController, RouteRollout
from router.control.splits import SplitOverride
from router.control.state import StateStore
from router.control.window import WindowCounters, latency_factors

log = logging.getLogger("router.cluster")

TURN_S = 0.2
FLUSH_S = 1.0
LOOK_S = 0.5  # how often a member that does not lead tries to take the lease


class ClusterBusy(Exception):
    """An operator action could not be written (Redis down, or the state changed meanwhile)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


class MemoryStateStore(StateStore):
    """The rollout controller's store in a cluster: the shared document is the state, not a file."""

    def __init__(self, name: str) -> None:
        super().__init__(Path(f"<cluster {name}>"))
        self.data: dict[str, Any] = {}

    def load(self) -> dict[str, Any]:
        return dict(self.data)

    def save(self, data: dict[str, Any]) -> None:
        self.data = dict(data)


def export(ctl: RolloutController) -> dict[str, Any]:
    return {name: rr.to_json() for name, rr in ctl.routes.items()}


class Member:
    """This process as a member of the cluster `config.cluster.name`."""

    def __init__(self, config: Config, store: Store, ledger: SharedLedger, controller: RolloutController,
                 admin: str) -> None:
        assert config.cluster is not None
        self.config = config
        self.store = store
        self.ledger = ledger
        self.ctl = controller
        self.id = f"{socket.gethostname()}:{os.getpid()}:{admin}"
        self.lease = Lease(store, self.id, config.cluster.lease_s)
        self.doc = StateDoc(store)
        self.members = Members(store, self.id)
        self.shadow = SharedShadow(store, self.id)
        feedback = config.monitoring.feedback
        self.predictions = SharedPredictions(store, self.id, feedback.retention if feedback else 86400.0)
        self.state = SharedState()  # the version this member applies
        self.problem: str | None = None  # why the shared state cannot be used
        self.captured: list[dict[str, Any]] = []  # decision-log entries awaiting an accepted write
        self.refused = 0  # leader writes refused (fenced or stale)
        self.lock = asyncio.Lock()  # operator actions and the leader's decision, one at a time
        self.wake = asyncio.Event()
        controller.log_sink = self.captured.append

    @property
    def leader(self) -> bool:
        return self.lease.leader

    def reconfigure(self, config: Config) -> None:
        self.config = config
        self.adopt(self.state)

    # -- the loop
    async def run(self) -> None:
        listener = asyncio.get_running_loop().create_task(self._listen(), name="cluster pub/sub")
        try:
            await self._loop()
        finally:
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await listener

    async def _loop(self) -> None:
        next_lease = next_flush = 0.0
        while True:
            try:
                next_lease, next_flush = await self._turn(next_lease, next_flush)
            except Exception:  # a bug in one turn must not end the membership: log, wait, go on
                log.exception("cluster %s: member loop turn failed", self.store.cfg.name)
                await asyncio.sleep(1.0)

    async def _turn(self, next_lease: float, next_flush: float) -> tuple[float, float]:
        """One turn: lease, follow the shared state, flush (every FLUSH_S), decide if leading."""
        now = time.monotonic()
        if now >= next_lease:
            await self.lease.step()
            # the leader renews at a third of the TTL; the others look often, so that a dead
            # leader is replaced within about the TTL plus half a second
            next_lease = now + (self.lease.renew_every_s if self.leader else min(LOOK_S, self.lease.renew_every_s))
        await self.follow()
        if now >= next_flush:
            next_flush = now + FLUSH_S
            with contextlib.suppress(StoreDown):
                await self.ledger.flush(self.store)
                await self.shadow.sync(self.ledger.shadow)
                self.ledger.shadow_view = self.shadow.view
                await self.predictions.flush()
                await self.members.beat(self.heartbeat())
        if self.leader and self.store.up and self.problem is None:
            await self.decide()
        elif not self.leader:
            self.captured.clear()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.wake.wait(), TURN_S)
        self.wake.clear()
        return next_lease, next_flush

    async def _listen(self) -> None:
        """Wake the loop when any member publishes a new version (polling covers a lost message)."""
        while True:
            pubsub = self.store.redis.pubsub()
            try:
                await pubsub.subscribe(self.doc.channel)
                while True:
                    # an explicit timeout: no message for a while is not an error (socket_timeout would be)
                    if await pubsub.get_message(ignore_subscribe_messages=True, timeout=5.0) is not None:
                        self.wake.set()
            except Exception:  # Redis away: polling carries on; subscribe again later
                await asyncio.sleep(1.0)
            finally:
                with contextlib.suppress(Exception):
                    close: Callable[[], Awaitable[None]] = pubsub.aclose  # untyped in redis-py
                    await close()

    async def follow(self) -> None:
        """Apply the shared document if its version moved; on a problem, keep the last state."""
        try:
            version = await self.doc.version()
            if version == self.state.version and self.problem is None:
                return
            state = await self.doc.read()
        except StoreDown:
            return
        except StateProblem as exc:
            if self.problem != str(exc):
                log.error("cluster %s: %s", self.store.cfg.name, exc)
            self.problem = str(exc)
            return
        self.problem = None
        self.adopt(state)

    def adopt(self, state: SharedState) -> None:
        """Make this process serve `state`: rollout phases, step windows, splits, driven percentages."""
        self.state = state
        routes = {r.name: r for r in self.config.routes}
        for name, rr in self.ctl.routes.items():
            saved = state.rollouts.get(name)
            if not isinstance(saved, dict) or tuple(saved.get("key", ())) != rr.key:
                continue  # not written yet by the leader, or the YAML differs: keep the local start
            try:
                self._adopt_rollout(name, rr, saved)
            except (KeyError, TypeError, ValueError) as exc:
                log.error("cluster %s: route %s: unreadable shared rollout state (%r): keeping the local one",
                          self.store.cfg.name, name, exc)
        overrides = {}
        for name, raw in state.splits.items():
            route = routes.get(name)
            try:
                base = (str(raw["base"][0]), raw["base"][1], float(raw["base"][2]))
                if route is not None and base == SplitOverride.base_of(route):
                    overrides[name] = SplitOverride(float(raw["percent"]), base)
            except (KeyError, TypeError, ValueError, IndexError) as exc:
                log.error("cluster %s: route %s: unreadable shared split (%r): ignored", self.store.cfg.name, name, exc)
        self.ledger.splits.overrides = overrides
        self.ledger.force_driven({name: rr.percent() for name, rr in self.ctl.routes.items()})

    def _adopt_rollout(self, name: str, rr: RouteRollout, saved: dict[str, Any]) -> None:
        state = RolloutState(Phase(saved["phase"]), int(saved["step_index"]), bool(saved["approved"]))
        started = float(saved["step_started_at"])
        rr.state, rr.rollout_started_at = state, float(saved["rollout_started_at"])
        rr.last, rr.primary_only = dict(saved.get("last", {})), bool(saved.get("primary_only", False))
        if started != rr.step_started_at or self.ledger.windows.get(name) is None:
            rr.step_started_at = started
            self.ledger.open_window(name, WindowCounters(rr.key, rr.shadowed, started, rr.cfg.count_4xx,
                                                             latency_factors(rr.cfg.policy)))

    # -- the leader's decision
    async def decide(self) -> None:
        async with self.lock:
            before = export(self.ctl)
            self.ledger.staging = True
            try:
                self.ctl.tick()
            finally:
                self.ledger.staging = False
            after = export(self.ctl)
            if after == before and not self.captured:
                return
            new = SharedState(self.state.version, after, self.state.splits)
            self.adopt(self.state)  # until Redis accepts the decision, serve and show the committed state
            result = await self._write(new, self.lease.epoch)
            if result is not None and not result.ok:
                self.refused += 1
                log.error("cluster %s: the shared store refused this member's decision (%s, epoch %d): not applied",
                          self.store.cfg.name, "fenced: another member holds the lease" if result.fenced
                          else f"stale: {result.why}", self.lease.epoch)
                if result.fenced:
                    self.lease.epoch = 0
            if result is None or not result.ok:
                self.adopt(self.state)  # undo the staged decision: serve what the cluster holds

    async def _write(self, new: SharedState, epoch: int | None) -> WriteResult | None:
        entries, self.captured[:] = [{**e, "member": self.id} for e in self.captured], []
        try:
            result = await self.doc.write(new, self.state.version, epoch, entries)
        except StoreDown:
            return None
        if result.ok:
            new.version = result.version
            for entry in entries:
                self.ctl.append_log(entry)
            self.adopt(new)
        return result

    # -- operator actions from this replica's admin API (HTTP 503/409 through ClusterBusy)
    async def operator(self, route: str, action: OperatorAction, who: str | None = None,
                       why: str | None = None) -> Decision:
        async with self.lock:
            await self._fresh()
            self.ledger.staging = True
            try:
                decision = self.ctl.operator(route, action, who, why)  # InvalidTransition: nothing was changed
            finally:
                self.ledger.staging = False
            await self._commit(SharedState(self.state.version, export(self.ctl), self.state.splits))
            return decision

    async def set_split(self, route: RouteConfig, percent: float) -> None:
        async with self.lock:
            await self._fresh()
            splits = {**self.state.splits, route.name: {"percent": percent, "base": list(SplitOverride.base_of(route))}}
            await self._commit(SharedState(self.state.version, self.state.rollouts, splits))

    async def _fresh(self) -> None:
        try:
            self.adopt(await self.doc.read())
        except StoreDown as exc:
            raise ClusterBusy(503, f"the cluster store is unreachable ({exc}); nothing was changed, try again") \
                from None
        except StateProblem as exc:
            raise ClusterBusy(409, str(exc)) from None

    async def _commit(self, new: SharedState) -> None:
        self.adopt(self.state)  # the staged change shows nowhere before Redis accepts it
        result = await self._write(new, None)
        if result is None or not result.ok:
            self.adopt(self.state)
            if result is None:
                raise ClusterBusy(503, "the cluster store became unreachable; nothing was changed, try again")
            raise ClusterBusy(409, f"the shared state changed meanwhile ({result.why}); nothing was changed, "
                              "try again")

    # -- reads
    def heartbeat(self) -> dict[str, Any]:
        return {"member": self.id, "pid": os.getpid(), "leader": self.leader, "epoch": self.lease.epoch,
                "applied_version": self.state.version, "time": time.time()}

    async def info(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.store.cfg.name, "member": self.id, "leader": self.leader,
                               "applied_version": self.state.version, "problem": self.problem,
                               "store": {"up": self.store.up, "error": self.store.last_error,
                                         "down_since": self.store.down_since},
                               "refused_writes": self.refused, "dropped_windows": self.ledger.dropped}
        try:
            holder, epoch = await self.lease.holder()
            out["lease"] = {"holder": holder, "epoch": epoch}
            out["members"] = await self.members.list()
            out["version"] = await self.doc.version()
        except StoreDown:
            out["lease"], out["members"], out["version"] = None, [], None
        return out

    async def tail(self, route: str, n: int) -> list[dict[str, Any]]:
        try:
            return await self.doc.tail(route, n)
        except StoreDown:
            return self.ctl.tail(route, n)  # this process's own file: better than nothing

    async def close(self) -> None:
        with contextlib.suppress(StoreDown):
            await self.ledger.flush(self.store)
        await self.lease.release()
        with contextlib.suppress(StoreDown):
            await self.members.leave()
        await self.store.close()
