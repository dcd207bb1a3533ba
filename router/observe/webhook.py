"""Fire-and-forget JSON webhooks (rollout phase changes, alerts): never awaited by the caller."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import aiohttp

log = logging.getLogger("router.observe.webhook")


class Webhook:
    """Posts JSON in background tasks with a 5 s timeout; counts what arrived and what failed."""

    def __init__(self) -> None:
        self.sent = 0
        self.failed = 0
        self._session: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def post(self, url: str, payload: dict[str, Any]) -> None:
        task = asyncio.get_running_loop().create_task(self._post(url, payload))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _post(self, url: str, payload: dict[str, Any]) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5))
        try:
            async with self._session.post(url, json=payload) as resp:
                if resp.status >= 300:
                    raise aiohttp.ClientError(f"status {resp.status}")
            self.sent += 1
        except (aiohttp.ClientError, TimeoutError) as exc:
            self.failed += 1
            log.warning("webhook %s failed: %s", url, exc)

    async def close(self) -> None:
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=5)
        if self._session is not None:
            await self._session.close()
