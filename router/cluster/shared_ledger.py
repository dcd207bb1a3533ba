"""The ledger of a cluster member: counts locally in O(1), flushes deltas to Redis, reads the sums.

Outcome records still land in plain in-process counters (the data path never waits for Redis).
The flusher takes each step window's counts since the last flush, adds them to the window's hash
in Redis with HINCRBY (one pipelined transaction per flush, at most every second), and reads back
the cluster-wide sums in the same round trip. `evidence()` is then the cluster sum plus what this
process counted since. When Redis is down the deltas wait, merged per window, and are flushed when
it returns; past `MAX_PENDING` windows the oldest are dropped and counted.

Run-time splits and driven percentages come from the shared document (router.cluster.node adopts
it); while the leader stages a decision, its driven percentages are not applied until the write
has been accepted (`staging`).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

from router.cluster.store import Store
from router.decision import StepEvidence
from router.ledger import Ledger
from router.shadowstats import ShadowStats
from router.splits import Splits
from router.window import WindowCounters

log = logging.getLogger("router.cluster")

MAX_PENDING = 256  # windows whose deltas wait for Redis; each is a few dozen integers
WINDOW_TTL_S = 14 * 86400  # a window's hash outlives any step; then Redis forgets it


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, int]:
    """WindowCounters.to_json() as flat integer fields (`primary.latency.3`), for HINCRBY."""
    out: dict[str, int] = {}
    for k, v in data.items():
        if isinstance(v, Mapping):
            out.update(flatten(v, f"{prefix}{k}."))
        elif isinstance(v, int) and not isinstance(v, bool) and v:
            out[prefix + k] = v
    return out


def evidence_of(fields: Mapping[str, Any]) -> StepEvidence:
    """The evidence in a window hash (as Redis returns it: string values)."""
    sides: dict[str, dict[str, Any]] = {s: {"requests": 0, "errors": 0, "labelled": 0, "correct": 0, "latency": {}}
                                        for s in ("primary", "candidate")}
    top = {"comparisons": 0, "agreements": 0}
    for name, value in fields.items():
        parts = name.split(".")
        if len(parts) == 1 and parts[0] in top:
            top[parts[0]] = int(value)
        elif len(parts) == 2 and parts[0] in sides:
            sides[parts[0]][parts[1]] = int(value)
        elif len(parts) == 3 and parts[0] in sides and parts[1] == "latency":
            sides[parts[0]]["latency"][parts[2]] = int(value)
    data = {"shadowed": False, **top, **sides}
    return WindowCounters.from_json(("", ""), 0.0, data).evidence()


def window_id(route: str, started_at: float) -> str:
    return f"win:{route}:{started_at!r}"


class SharedLedger(Ledger):
    """A Ledger whose step windows are summed over the cluster through Redis."""

    def __init__(self, splits: Splits) -> None:
        super().__init__(splits)
        self.staging = False  # the leader is deciding: hold driven percentages until the write is accepted
        self.pending: OrderedDict[str, dict[str, int]] = OrderedDict()  # window id -> deltas not yet in Redis
        self.sums: dict[str, StepEvidence] = {}  # window id -> cluster sum at the last flush
        self.dropped = 0  # windows' deltas dropped because Redis stayed away too long
        self.flushes = 0
        self.shadow_view: dict[str, ShadowStats] = {}  # the cluster's shadow stats, summed at the last flush

    def shadow_stats(self, route: str) -> ShadowStats | None:
        """The cluster-wide report when there is one for the same (primary, shadow) pair, else this process's."""
        local = self.shadow.get(route)
        shared = self.shadow_view.get(route)
        return shared if local is not None and shared is not None and shared.key == local.key else local

    # -- the rollout controller's writes: applied only once the shared document holds them
    def drive(self, route: str, percent: float) -> None:
        if not self.staging:
            super().drive(route, percent)

    def set_driven(self, percents: Mapping[str, float]) -> None:
        if not self.staging:
            super().set_driven(percents)

    def force_driven(self, percents: Mapping[str, float]) -> None:
        self.splits.driven = dict(percents)

    # -- evidence: the cluster's sum, plus what this process counted since
    def evidence(self, route: str) -> StepEvidence | None:
        window = self.windows.get(route)
        if window is None:
            return None
        wid = window_id(route, window.started_at)
        ev = self.sums.get(wid, StepEvidence()) + window.evidence()
        waiting = self.pending.get(wid)
        return ev + evidence_of(waiting) if waiting else ev

    # -- the flusher
    def take_deltas(self) -> None:
        """Move every window's counts since the last flush into `pending` (merged per window)."""
        for route, w in list(self.windows.items()):
            fields = flatten(w.to_json())
            if not fields:
                continue
            self.windows[route] = WindowCounters(w.key, w.shadowed, w.started_at)
            merged = self.pending.setdefault(window_id(route, w.started_at), {})
            for name, n in fields.items():
                merged[name] = merged.get(name, 0) + n
        while len(self.pending) > MAX_PENDING:
            wid, _ = self.pending.popitem(last=False)
            self.dropped += 1
            log.error("cluster: dropped the unflushed counts of %s (Redis away too long)", wid)

    async def flush(self, store: Store) -> None:
        """Send pending deltas and read back the sums of the open windows, in one transaction.
        StoreDown leaves everything pending for the next turn."""
        self.take_deltas()
        sent = list(self.pending.items())
        current = [window_id(r, w.started_at) for r, w in self.windows.items()]
        pipe = store.redis.pipeline(transaction=True)
        for wid, fields in sent:
            for name, n in fields.items():
                pipe.hincrby(store.key(wid), name, n)
            pipe.expire(store.key(wid), WINDOW_TTL_S)
        for wid in current:
            pipe.hgetall(store.key(wid))
        results = await store.call(pipe.execute())
        for wid, _ in sent:
            self.pending.pop(wid, None)
        self.sums = {wid: evidence_of(fields) for wid, fields in zip(current, results[-len(current):], strict=True)} \
            if current else {}
        self.flushes += 1
