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

from router.analysis.decision import LlmEvidence, StepEvidence
from router.cluster.store import Store
from router.control.ledger import Ledger
from router.control.shadowstats import ShadowStats
from router.control.splits import Splits
from router.control.window import WindowCounters

log = logging.getLogger("router.cluster")

MAX_PENDING = 256  # windows whose deltas wait for Redis; each is a few dozen integers
WINDOW_TTL_S = 14 * 86400  # a window's hash outlives any step; then Redis forgets it


def flatten(data: Mapping[str, Any] | list[Any], prefix: str = "") -> dict[str, int]:
    """WindowCounters.to_json() as flat integer fields (`primary.latency.3`, `llm.judge.0`), for HINCRBY."""
    out: dict[str, int] = {}
    items = data.items() if isinstance(data, Mapping) else enumerate(data)
    for k, v in items:
        if isinstance(v, Mapping | list):
            out.update(flatten(v, f"{prefix}{k}."))
        elif isinstance(v, int) and not isinstance(v, bool) and v:
            out[f"{prefix}{k}"] = v
    return out


def add_fields(*parts: Mapping[str, int] | None) -> dict[str, int]:
    out: dict[str, int] = {}
    for part in parts:
        for name, n in (part or {}).items():
            out[name] = out.get(name, 0) + n
    return out


def window_of(fields: Mapping[Any, Any], shadowed: bool = False,
              latency_factors: tuple[float, float] | None = None) -> WindowCounters:
    """The counters in a window hash (names and values may be bytes, as Redis returns them; this
    module is compiled, so the annotation must admit them). The hash keeps
    integers only: whether the window is shadowed, and the factors its paired latency counts were
    taken at, come from the local window."""
    nested: dict[str, Any] = {}
    for name, value in fields.items():
        *path, leaf = (name.decode() if isinstance(name, bytes) else name).split(".")
        node = nested
        for part in path:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                break
        else:
            node[leaf] = int(value)

    def side(d: dict[str, Any]) -> dict[str, Any]:
        return {k: d.get(k, 0) for k in ("requests", "errors", "client_errors", "labelled", "correct")} | \
            {"latency": d.get("latency", {})}

    def listed(d: Any, n: int) -> list[Any]:
        return [d.get(str(i), 0) if isinstance(d, dict) else 0 for i in range(n)]

    llm = nested.get("llm", {})
    data = {"shadowed": shadowed, **{k: nested.get(k, 0) for k in (
                "comparisons", "agreements", "pairs", "discordant_candidate", "discordant_primary", "labelled_pairs",
                "only_candidate_right", "only_primary_right", "order_pairs", "order_worse_pass", "order_worse_fail")},
            "latency_pairs": nested.get("latency_pairs", {}),
            "primary": side(nested.get("primary", {})), "candidate": side(nested.get("candidate", {})),
            "llm": {"ttft": [h or {} for h in listed(llm.get("ttft"), 2)],
                    "tpot": [h or {} for h in listed(llm.get("tpot"), 2)],
                    "output": listed(llm.get("output"), 2), "answers": listed(llm.get("answers"), 2),
                    "judge": listed(llm.get("judge"), 3)}}
    return WindowCounters.from_json(("", ""), 0.0, data, latency_factors=latency_factors)


def window_id(route: str, started_at: float) -> str:
    return f"win:{route}:{started_at!r}"


class SharedLedger(Ledger):
    """A Ledger whose step windows are summed over the cluster through Redis."""

    def __init__(self, splits: Splits) -> None:
        super().__init__(splits)
        self.staging = False  # the leader is deciding: hold driven percentages until the write is accepted
        self.pending: OrderedDict[str, dict[str, int]] = OrderedDict()  # window id -> deltas not yet in Redis
        self.sums: dict[str, dict[str, int]] = {}  # window id -> the cluster's counts at the last flush
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
    def _merged(self, route: str) -> WindowCounters | None:
        window = self.windows.get(route)
        if window is None:
            return None
        wid = window_id(route, window.started_at)
        return window_of(add_fields(self.sums.get(wid), flatten(window.to_json()), self.pending.get(wid)),
                         window.shadowed, window.factors)

    def evidence(self, route: str) -> StepEvidence | None:
        merged = self._merged(route)
        return merged.evidence() if merged is not None else None

    def llm_evidence(self, route: str) -> LlmEvidence | None:
        merged = self._merged(route)
        return merged.llm.evidence() if merged is not None else None

    def llm_output(self, route: str) -> dict[str, float | None]:
        merged = self._merged(route)
        return merged.llm.output_summary() if merged is not None else {}

    # -- the flusher
    def take_deltas(self) -> None:
        """Move every window's counts since the last flush into `pending` (merged per window)."""
        for route, w in list(self.windows.items()):
            fields = flatten(w.to_json())
            if not fields:
                continue
            self.windows[route] = WindowCounters(w.key, w.shadowed, w.started_at, w.count_4xx, w.factors)
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
        self.sums = {wid: {(k.decode() if isinstance(k, bytes) else k): int(v) for k, v in fields.items()}
                     for wid, fields in zip(current, results[-len(current):], strict=True)} if current else {}
        self.flushes += 1
