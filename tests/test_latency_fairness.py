"""Shadow and live latencies measure the same thing: no Nagle on upstream sockets, and copies find
warm connections even when they are rare and the backend closes idle connections."""

from __future__ import annotations

import asyncio
import random
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from router.config import Endpoint
from router.dataplane.upstream import PoolSpec, UpstreamPool
from tests.helpers import RouterFactory, base_config, eventually, free_port, get_json

SETUP_S = 0.05  # what a fresh connection costs before its first answer
IDLE_CLOSE_S = 0.3  # the backend's keep-alive timeout
BODY = b'{"predictions": [1]}'


@dataclass
class FreshSlowBackend:
    """A raw-socket model server that is slow only on a fresh connection's first answer, as a
    backend is whose first small write waits for a delayed ACK (Nagle), and that closes
    connections idle for IDLE_CLOSE_S, as most servers' keep-alive timeouts do. It records, per
    request, whether it was a shadow copy and whether it paid the fresh-connection cost."""

    server: asyncio.Server | None = None
    url: str = ""
    served: list[tuple[bool, bool]] = field(default_factory=list)  # (shadow copy, paid the set-up)
    handlers: set[asyncio.Task[Any]] = field(default_factory=set)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        ready_at = time.monotonic() + SETUP_S
        task = asyncio.current_task()
        assert task is not None
        self.handlers.add(task)
        try:
            while True:
                async with asyncio.timeout(IDLE_CLOSE_S):
                    head = await reader.readuntil(b"\r\n\r\n")
                lines = head.lower().split(b"\r\n")
                length = next((int(x.split(b":")[1]) for x in lines if x.startswith(b"content-length:")), 0)
                await reader.readexactly(length)
                wait = ready_at - time.monotonic()
                self.served.append((b"x-shadow-request: 1" in lines, wait > 0))
                if wait > 0:
                    await asyncio.sleep(wait)
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                             % (len(BODY), BODY))
                await writer.drain()
                ready_at = 0.0
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self.handlers.discard(task)
            writer.close()

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        for task in list(self.handlers):  # the router may still hold connections: end them now
            task.cancel()
        await asyncio.gather(*self.handlers, return_exceptions=True)
        await self.server.wait_closed()


@pytest.fixture
async def fresh_slow() -> AsyncIterator[list[FreshSlowBackend]]:
    backends = []
    for _ in range(2):
        b = FreshSlowBackend()
        port = free_port()
        b.server = await asyncio.start_server(b.handle, "127.0.0.1", port)
        b.url = f"http://127.0.0.1:{port}"
        backends.append(b)
    yield backends
    for b in backends:
        await b.stop()


async def test_rare_copies_to_a_backend_slow_on_fresh_connections_measure_like_live(
        make_router: RouterFactory, fresh_slow: list[FreshSlowBackend], tmp_path: Path) -> None:
    live, shadow = fresh_slow
    # 1% mirrored, about every 600 ms: most copies come after the shadow's last connection has been
    # idle past the backend's keep-alive timeout; live requests, every few ms, never do.
    routes = [{"name": "m", "match": {"path_prefix": "/"}, "primary": "live",
               "shadow": {"backend": "shadow", "percent": 1, "compare": {"format": "json"}}}]
    r = await make_router(base_config(tmp_path, {"live": live.url, "shadow": shadow.url}, routes))
    rng = random.Random(3)
    async with aiohttp.ClientSession() as s:
        copies = 0
        while copies < 20:
            async with s.post(r.url + "/predict", json={"x": rng.random()}) as resp:
                assert resp.status == 200
                await resp.read()
            await asyncio.sleep(0.004)
            copies = sum(1 for is_copy, _ in shadow.served if is_copy)
        report: dict[str, Any] = await eventually(lambda: compared_all(s, r.admin), "every copy compared")
    cold = sum(1 for is_copy, paid in shadow.served if is_copy and paid)
    lat = report["latency_seconds"]
    assert cold < copies / 2, f"{cold} of {copies} copies waited for a fresh connection's set-up"
    # The median copy did not pay the set-up, so the medians compare the models, not the connections.
    assert lat["shadow"]["p50"] < lat["live"]["p50"] + SETUP_S / 2, lat


async def compared_all(s: aiohttp.ClientSession, admin: str) -> dict[str, Any] | None:
    """The shadow report once every copy is accounted for: compared, or failed (a copy sent just as
    the backend closes an idle connection fails, as it would with any keep-alive server)."""
    report: dict[str, Any] = await get_json(s, admin + "/-/routes/m/shadow")
    done = report["in_flight"] == 0 and report["compared"] + report["errors"]["shadow"]["k"] == report["mirrored"] > 0
    return report if done else None


async def test_upstream_sockets_send_at_once() -> None:
    ended = asyncio.Event()

    async def keep(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # until the pool closes it
        writer.close()
        ended.set()

    server = await asyncio.start_server(keep, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    pool = UpstreamPool(PoolSpec("b", Endpoint(f"http://127.0.0.1:{port}", "http", "127.0.0.1", port), 4, 4, 1.0))
    try:
        conn = await pool.acquire(1.0)
        assert conn.transport is not None
        sock = conn.transport.get_extra_info("socket")
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        conn.close()
        async with asyncio.timeout(5):
            await ended.wait()
    finally:
        pool.close()
        server.close()
        await server.wait_closed()
