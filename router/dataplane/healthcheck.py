"""Active health checks: GET each endpoint's health path on its own schedule.

Runs beside the data path (its own aiohttp session, never the request pools). Results go into the
shared `EndpointState`, which the balancer reads: `unhealthy_after` failed checks in a row take an
endpoint out of rotation; `healthy_after` passing ones bring it back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

import aiohttp

from router.config import BackendConfig, Endpoint
from router.dataplane.balancer import EndpointState
from router.runtime import Runtime

log = logging.getLogger("router.health")


class HealthChecker:
    """One loop for all backends with a `health` block; re-reads the runtime each round."""

    def __init__(self, runtime: Callable[[], Runtime]) -> None:
        self.runtime = runtime

    async def run(self) -> None:
        async with aiohttp.ClientSession() as session:
            due: dict[tuple[str, str], float] = {}
            loop = asyncio.get_running_loop()
            while True:
                rt = self.runtime()
                now = loop.time()
                jobs = []
                for name, group in rt.groups.items():
                    backend = group.backend
                    if backend.health is None:
                        continue
                    for pool, state in zip(group.pools, group.states, strict=True):
                        key = (name, pool.endpoint.url)
                        if due.get(key, 0.0) <= now:
                            due[key] = now + backend.health.interval
                            jobs.append(self._check(session, backend, pool.endpoint, state))
                if jobs:
                    await asyncio.gather(*jobs)
                await asyncio.sleep(0.1)

    async def _check(self, session: aiohttp.ClientSession, backend: BackendConfig, endpoint: Endpoint,
                     state: EndpointState) -> None:
        hc = backend.health
        assert hc is not None
        ok = False
        with contextlib.suppress(aiohttp.ClientError, TimeoutError):
            timeout = aiohttp.ClientTimeout(total=hc.timeout)
            async with session.get(endpoint.url.rstrip("/") + hc.path, timeout=timeout,
                                   headers={"User-Agent": "model-router-health"}) as resp:
                ok = 200 <= resp.status < 300
        was = state.healthy
        state.check_result(ok, backend)
        if state.healthy != was:
            log.warning("backend %s endpoint %s is now %s", backend.name, endpoint.url,
                        "healthy" if state.healthy else "unhealthy")
