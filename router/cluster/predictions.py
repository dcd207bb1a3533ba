"""Predictions shared across the cluster, so that feedback posted to any member joins them.

Each member keeps its own feedback store (SQLite in its state_dir). What it remembers is also
queued here and written to Redis in the member's flush (pipelined, at most every second), one key
per request id with the feedback retention as its TTL: Redis forgets them as the store does.
Feedback for a request id this member does not know is looked up there in one MGET and copied
into the local store before the join. The queue is bounded; what overflows is dropped and counted.
"""

from __future__ import annotations

import json
from collections import deque

from router.cluster.store import Store, StoreDown
from router.observe.feedback import Prediction

MAX_QUEUED = 50_000
BATCH = 5_000


class SharedPredictions:
    """The outbox of this member's predictions, and the lookup of other members' ones."""

    def __init__(self, store: Store, member: str, ttl_s: float) -> None:
        self.store = store
        self.member = member
        self.ttl_s = max(1, int(ttl_s))
        self.queue: deque[Prediction] = deque()
        self.dropped = 0
        self.found = 0

    def remembered(self, predictions: list[Prediction]) -> None:
        room = MAX_QUEUED - len(self.queue)
        self.queue.extend(predictions[:max(room, 0)])
        self.dropped += max(len(predictions) - max(room, 0), 0)

    def key(self, request_id: str) -> str:
        return self.store.key("pred", request_id)

    async def flush(self) -> None:
        """Write queued predictions in batches; on StoreDown the unsent ones stay queued."""
        while self.queue:
            batch = [self.queue[i] for i in range(min(BATCH, len(self.queue)))]
            pipe = self.store.redis.pipeline(transaction=False)
            for p in batch:
                pipe.set(self.key(p.request_id), json.dumps([self.member, *p]), ex=self.ttl_s, nx=True)
            await self.store.call(pipe.execute())
            for _ in batch:
                self.queue.popleft()

    async def lookup(self, request_ids: list[str]) -> list[Prediction]:
        """Other members' predictions for these ids (none when Redis is away: the join says unknown)."""
        if not request_ids:
            return []
        try:
            raw = await self.store.call(self.store.redis.mget([self.key(r) for r in request_ids]))
        except StoreDown:
            return []
        out = []
        for value in raw:
            if value:
                member, *fields = json.loads(value)
                if member != self.member:
                    out.append(Prediction(*fields))
        self.found += len(out)
        return out
