"""A route looping back to the router is stopped; a client that stops reading is cut off."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import aiohttp
from aiohttp import web

from tests.helpers import BackendFactory, RouterFactory, base_config


def route(name: str, backend: str) -> dict[str, object]:
    return {"name": name, "match": {"path_prefix": "/"}, "primary": backend}


async def test_route_back_to_the_router_is_508(make_router: RouterFactory, make_backend: BackendFactory, tmp_path: Path) -> None:
    cfg = base_config(tmp_path, {}, [route("loop", "self")])
    cfg["backends"] = {"self": {"url": "http://" + cfg["listen"]}}
    r = await make_router(cfg)
    async with aiohttp.ClientSession() as s, s.get(r.url + "/x") as resp:
        assert resp.status == 508
        assert "points back at the router" in (await resp.json())["error"]["message"]


async def test_client_that_stops_reading_is_cut_off(make_router: RouterFactory, make_backend: BackendFactory, tmp_path: Path) -> None:
    chunk = b"z" * 65536
    total = 400 * len(chunk)  # 26 MB: far more than socket buffers hold

    async def huge(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        resp.content_length = total
        await resp.prepare(request)
        for _ in range(total // len(chunk)):
            await resp.write(chunk)
        return resp

    b = await make_backend("huge", huge)
    cfg = base_config(tmp_path, {"huge": b.url}, [route("m", "huge")])
    cfg["limits"]["idle_timeout"] = "1s"
    r = await make_router(cfg)
    host, port = r.host_port
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
    await writer.drain()
    await asyncio.sleep(2.5)  # read nothing meanwhile
    received = 0
    async with asyncio.timeout(10):
        with contextlib.suppress(ConnectionResetError):  # the router resets: what was unsent is dropped
            while data := await reader.read(1 << 20):
                received += len(data)
    writer.close()
    assert 0 < received < total  # cut off: the connection ended before the body was complete
