"""The monitor's queue is bounded in bytes: while a slow feedback store holds its drain up, requests
with large responses are dropped from monitoring and counted, instead of growing memory."""

from __future__ import annotations

import asyncio
import re
import sqlite3
from pathlib import Path

import aiohttp
from aiohttp import web

from router.observe.monitor import QUEUE_BYTES
from tests.helpers import BackendFactory, RouterFactory, base_config

BODY = b'{"label": "fraud", "pad": "' + b"a" * 65_000 + b'"}'  # about the default capture size
REQUESTS = 1200  # ~78 MB of captured bodies: well past QUEUE_BYTES, far below the 20,000-item limit


def metric(text: str, name: str) -> float:
    match = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
    assert match, f"{name} missing from /metrics"
    return float(match[1])


async def test_monitor_queue_drops_beyond_its_byte_bound(
        make_router: RouterFactory, make_backend: BackendFactory, tmp_path: Path) -> None:
    async def big(request: web.Request) -> web.Response:
        return web.Response(body=BODY, content_type="application/json")

    backend = await make_backend("v1", big)
    route = {"name": "m", "match": {"path_prefix": "/m"}, "primary": "v1"}
    r = await make_router(base_config(tmp_path, {"v1": backend.url}, [route],
                                      monitoring={"feedback": {"retention": "1h"}}))
    # Another writer holds the store: every remember_many waits out SQLite's busy timeout.
    lock = sqlite3.connect(Path(r.config["state_dir"]) / "feedback.sqlite3", isolation_level=None)
    try:
        lock.execute("BEGIN EXCLUSIVE")
        async with aiohttp.ClientSession() as s:
            async def send(n: int) -> None:
                for _ in range(n):
                    async with s.post(r.url + "/m", data=b"{}") as resp:
                        assert resp.status == 200
                        await resp.read()

            await asyncio.gather(*(send(REQUESTS // 12) for _ in range(12)))
            async with s.get(r.admin + "/metrics") as resp:
                text = await resp.text()
    finally:
        lock.rollback()
        lock.close()

    assert metric(text, "router_monitor_dropped_total") > 0
    assert metric(text, "router_monitor_queue_bytes") <= QUEUE_BYTES
