"""The connection to the cluster's Redis: one client, one key prefix, one health flag.

Every call has a short timeout and no retries of its own: the callers are background loops that
try again on their next turn, and nothing on the request path ever waits for Redis.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from router.config.clusterconfig import ClusterConfig

log = logging.getLogger("router.cluster")

T = TypeVar("T")
TIMEOUT_S = 0.5  # a slow Redis is a down Redis: the loops hold their state and try again


class StoreDown(Exception):
    """Redis did not answer (unreachable, slow, refused the command); the message says why."""


class Store:
    """The cluster's Redis under the key prefix `mr:{name}:`, with a health flag the metrics read."""

    def __init__(self, cfg: ClusterConfig, url: str) -> None:
        self.cfg = cfg
        self.prefix = cfg.prefix
        self.redis = aioredis.Redis.from_url(
            url, socket_timeout=TIMEOUT_S, socket_connect_timeout=TIMEOUT_S, retry=Retry(NoBackoff(), 0),
            decode_responses=True)
        self.up = False
        self.last_error: str | None = "not connected yet"
        self.down_since: float | None = time.time()

    def key(self, *parts: str) -> str:
        return self.prefix + ":".join(parts)

    async def call(self, what: Awaitable[T]) -> T:
        """Await one Redis operation; StoreDown on any Redis or connection error, and the flag follows."""
        try:
            result = await what
        except (RedisError, OSError) as exc:
            self._down(f"{type(exc).__name__}: {exc}")
            raise StoreDown(self.last_error or "") from exc
        if not self.up:
            log.warning("cluster %s: Redis is reachable again", self.cfg.name)
        self.up, self.last_error, self.down_since = True, None, None
        return result

    def _down(self, why: str) -> None:
        if self.up or self.last_error != why:
            log.error("cluster %s: Redis unreachable (%s): serving the last state, no rollout transitions",
                      self.cfg.name, why)
        self.up, self.last_error = False, why
        if self.down_since is None:
            self.down_since = time.time()

    def script(self, source: str) -> Any:
        return self.redis.register_script(source)

    async def close(self) -> None:
        await self.redis.aclose()
