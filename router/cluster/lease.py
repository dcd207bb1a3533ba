"""Leader election: a lease in Redis with a fencing epoch.

The lease is `SET key "member|epoch" PX ttl`, taken only when absent and renewed by its holder at
a third of the TTL; each new holder gets the next epoch (`INCR`). Every write of shared state
names the writer's epoch, and the write script refuses it unless the lease still holds that
epoch, so a leader that was paused past its lease cannot overwrite its successor's decisions
(Kleppmann's fencing token).
"""

from __future__ import annotations

import contextlib
import logging
import time

from router.cluster.store import Store, StoreDown

log = logging.getLogger("router.cluster")

ACQUIRE = """
local cur = redis.call('GET', KEYS[1])
if cur then
  local id, ep = string.match(cur, '^(.*)|(%d+)$')
  if id == ARGV[1] then
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
    return tonumber(ep)
  end
  return 0
end
local ep = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], ARGV[1] .. '|' .. ep, 'PX', ARGV[2])
return ep
"""


class Lease:
    """This member's view of the leader lease: whether it holds it, and with which epoch."""

    def __init__(self, store: Store, member: str, ttl_s: float) -> None:
        self.store = store
        self.member = member
        self.ttl_ms = int(ttl_s * 1000)
        self.renew_every_s = ttl_s / 3
        self.epoch = 0  # 0: not the leader
        self.held_since: float | None = None
        self._acquire = store.script(ACQUIRE)
        self._keys = [store.key("leader"), store.key("epoch")]

    @property
    def leader(self) -> bool:
        return self.epoch > 0

    async def step(self) -> None:
        """Take or renew the lease; on any failure this member stops deciding at once."""
        try:
            epoch = int(await self.store.call(self._acquire(keys=self._keys, args=[self.member, self.ttl_ms])))
        except StoreDown:
            epoch = 0
        if epoch and not self.epoch:
            self.held_since = time.time()
            log.warning("cluster %s: %s is the leader (epoch %d)", self.store.cfg.name, self.member, epoch)
        elif self.epoch and epoch != self.epoch:
            log.warning("cluster %s: %s lost the lease (epoch %d): no longer deciding",
                        self.store.cfg.name, self.member, self.epoch)
            self.held_since = None
        self.epoch = epoch

    async def holder(self) -> tuple[str | None, int]:
        """Who holds the lease now (member, epoch), as Redis says."""
        raw = await self.store.call(self.store.redis.get(self._keys[0]))
        if not raw:
            return None, 0
        member, _, epoch = str(raw).rpartition("|")
        return member, int(epoch or 0)

    async def release(self) -> None:
        """Give the lease up at shutdown so that another member takes over at once, not after the TTL."""
        if self.leader:
            release = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"
            with contextlib.suppress(StoreDown):
                await self.store.call(self.store.script(release)(keys=self._keys[:1],
                                                                 args=[f"{self.member}|{self.epoch}"]))
            self.epoch = 0
