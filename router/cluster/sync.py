"""The shared state document: rollout phases and run-time splits, versioned, written by CAS.

One hash `mr:{name}:state` holds `version`, `format`, `cluster` and `doc` (JSON: `rollouts` by
route and `splits` by route). Every write runs one Lua script that checks, atomically:
- the writer's epoch against the lease, when the writer is the leader (fencing), and
- the version the writer read (compare-and-set: an operator's action and the leader's decision
  never overwrite each other),
then stores the new document with version + 1, appends the decision-log entries and publishes
the version, so every member applies it within a second (polling is the fallback).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any

from router.cluster.store import Store

log = logging.getLogger("router.cluster")

FORMAT = 1  # of the document; an older or newer one is reported and never overwritten
LOG_KEEP = 10_000  # decision-log entries kept in Redis

WRITE = """
if ARGV[2] ~= '' then
  local holder = redis.call('GET', KEYS[2])
  if not holder or string.match(holder, '|(%d+)$') ~= ARGV[2] then return {-1, 'fenced'} end
end
local v = tonumber(redis.call('HGET', KEYS[1], 'version') or '0')
local f = redis.call('HGET', KEYS[1], 'format')
if v ~= tonumber(ARGV[1]) then return {-2, 'version ' .. v} end
if f and f ~= ARGV[4] then return {-3, 'format ' .. f} end
v = v + 1
redis.call('HSET', KEYS[1], 'version', v, 'doc', ARGV[3], 'format', ARGV[4], 'cluster', ARGV[5])
for i = 7, #ARGV do redis.call('RPUSH', KEYS[3], ARGV[i]) end
redis.call('LTRIM', KEYS[3], -tonumber(ARGV[6]), -1)
redis.call('PUBLISH', KEYS[4], v)
return {v, 'ok'}
"""


class StateProblem(Exception):
    """The shared state cannot be used (another format, another cluster's document)."""


@dataclass
class SharedState:
    """One version of the shared document."""

    version: int = 0
    rollouts: dict[str, Any] = field(default_factory=dict)
    splits: dict[str, Any] = field(default_factory=dict)

    def doc(self) -> str:
        return json.dumps({"rollouts": self.rollouts, "splits": self.splits}, sort_keys=True)


@dataclass(frozen=True, slots=True)
class WriteResult:
    ok: bool
    version: int
    why: str  # "ok", "fenced", "version N" (someone wrote since), "format N"

    @property
    def fenced(self) -> bool:
        return self.why == "fenced"


class StateDoc:
    """Reads and writes the shared document of one cluster."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.key = store.key("state")
        self.channel = store.key("changed")
        self.log_key = store.key("log")
        self._write = store.script(WRITE)

    async def version(self) -> int:
        raw = await self.store.call(self.store.redis.hget(self.key, "version"))
        return int(raw or 0)

    async def read(self) -> SharedState:
        """The current document; StateProblem if it was written by another format or cluster."""
        raw = await self.store.call(self.store.redis.hgetall(self.key))
        if not raw:
            return SharedState()
        fmt, cluster = raw.get("format"), raw.get("cluster")
        if fmt != str(FORMAT):
            older = fmt is None or not fmt.isdigit() or int(fmt) < FORMAT
            raise StateProblem(f"shared state {self.key} has format {fmt!r}, this router reads {FORMAT}: written "
                               f"by an {'older' if older else 'newer'} router; it is left untouched and rollouts "
                               "are held (upgrade every member, or delete the key to start afresh)")
        if cluster != self.store.cfg.name:
            raise StateProblem(f"shared state {self.key} belongs to cluster {cluster!r}, not "
                               f"{self.store.cfg.name!r}; left untouched, rollouts held")
        try:
            doc = json.loads(raw["doc"])
            return SharedState(int(raw["version"]), dict(doc["rollouts"]), dict(doc["splits"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise StateProblem(f"shared state {self.key} is unreadable ({exc}); left untouched, rollouts held") \
                from None

    async def write(self, state: SharedState, expected: int, epoch: int | None,
                    entries: list[dict[str, Any]]) -> WriteResult:
        """Store `state` as version expected + 1, if nobody wrote since and (for the leader) the lease
        still holds `epoch`."""
        keys = [self.key, self.store.key("leader"), self.log_key, self.channel]
        args = [expected, "" if epoch is None else str(epoch), state.doc(), str(FORMAT), self.store.cfg.name,
                LOG_KEEP, *(json.dumps(e) for e in entries)]
        code, why = await self.store.call(self._write(keys=keys, args=args))
        code = int(code)
        return WriteResult(code > 0, max(code, 0), str(why))

    async def tail(self, route: str, n: int) -> list[dict[str, Any]]:
        """The last `n` cluster decision-log entries of `route` (scanning at most the last 2,000)."""
        raw = await self.store.call(self.store.redis.lrange(self.log_key, -2000, -1))
        out = [e for e in (json.loads(line) for line in raw) if e.get("route") == route]
        return out[-n:] if n else []
