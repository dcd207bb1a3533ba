"""The member list: each process writes a heartbeat every second; stale ones are left out and pruned."""

from __future__ import annotations

import json
import time
from typing import Any

from router.cluster.store import Store

STALE_S = 5.0  # a member silent this long is gone (killed, partitioned, or stopped)


class Members:
    """Heartbeats in the hash `mr:{name}:members`, one field per member."""

    def __init__(self, store: Store, member: str) -> None:
        self.store = store
        self.member = member
        self.key = store.key("members")

    async def beat(self, info: dict[str, Any]) -> None:
        await self.store.call(self.store.redis.hset(self.key, self.member, json.dumps(info)))

    async def list(self) -> list[dict[str, Any]]:
        raw = await self.store.call(self.store.redis.hgetall(self.key))
        now = time.time()
        alive: list[dict[str, Any]] = []
        stale: list[dict[str, Any]] = []
        for text in raw.values():
            info = json.loads(text)
            (alive if now - float(info.get("time", 0)) < STALE_S else stale).append(info)
        gone = [i["member"] for i in stale if now - float(i.get("time", 0)) > 60 * STALE_S]
        if gone:
            await self.store.call(self.store.redis.hdel(self.key, *gone))
        return sorted(alive, key=lambda i: str(i["member"]))

    async def leave(self) -> None:
        await self.store.call(self.store.redis.hdel(self.key, self.member))
