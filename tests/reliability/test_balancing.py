"""Failing backends: endpoints balanced, ejected and restored; safe retries in a budget; fail fast."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from tests.helpers import BackendFactory, RouterFactory, base_config, eventually, free_port


def route(backend: str, **extra: Any) -> dict[str, Any]:
    return {"name": "m", "match": {"path_prefix": "/"}, "primary": backend, **extra}


async def status(s: aiohttp.ClientSession, admin: str) -> dict[str, Any]:
    async with s.get(admin + "/-/status") as r:
        return dict(await r.json())


async def metric(s: aiohttp.ClientSession, admin: str, prefix: str) -> float:
    async with s.get(admin + "/metrics") as r:
        for line in (await r.text()).splitlines():
            if line.startswith(prefix):
                return float(line.rsplit(" ", 1)[1])
    return 0.0


async def test_endpoints_are_balanced_round_robin(make_router: RouterFactory, make_backend: BackendFactory,
                                                  tmp_path: Path) -> None:
    a, b = await make_backend("a"), await make_backend("b")
    cfg = base_config(tmp_path, {}, [route("m")])
    cfg["backends"] = {"m": {"urls": [a.url, b.url]}}
    r = await make_router(cfg)
    async with aiohttp.ClientSession() as s:
        for _ in range(20):
            async with s.get(r.url + "/x") as resp:
                assert resp.status == 200 and resp.headers["X-Model-Backend"] == "m"
    assert len(a.seen) == 10 and len(b.seen) == 10


async def test_dead_endpoint_is_ejected_retried_around_and_restored(
        make_router: RouterFactory, make_backend: BackendFactory, tmp_path: Path) -> None:
    good = await make_backend("good")
    dead_port = free_port()
    cfg = base_config(tmp_path, {}, [route("m")])
    cfg["backends"] = {"m": {"urls": [f"http://127.0.0.1:{dead_port}", good.url],
                             "outlier": {"consecutive_failures": 2, "base_ejection": "1s"}}}
    r = await make_router(cfg)
    async with aiohttp.ClientSession() as s:
        for _ in range(12):  # POSTs too: a refused connection never carried the request, so it is retried
            async with s.post(r.url + "/x", data=b"{}") as resp:
                assert resp.status == 200
        assert len(good.seen) == 12
        assert await metric(s, r.admin, "router_endpoint_ejections_total") == 1
        endpoints = (await status(s, r.admin))["backends"]["m"]
        assert [e["available"] for e in endpoints] == [False, True]
        # the endpoint comes back: after its ejection it gets traffic again
        revived = await make_backend("revived", port=dead_port)
        await eventually(lambda: _all_available(s, r.admin), "the ejection to end", timeout=10)
        for _ in range(6):
            async with s.get(r.url + "/x") as resp:
                assert resp.status == 200
    assert len(revived.seen) >= 2


async def test_active_health_checks_take_out_and_bring_back(
        make_router: RouterFactory, make_backend: BackendFactory, tmp_path: Path) -> None:
    healthy = {"value": False}

    async def sometimes(request: web.Request) -> web.StreamResponse:
        if request.path == "/health":
            return web.json_response({}, status=200 if healthy["value"] else 503)
        return web.json_response({"who": "a"})

    a, b = await make_backend("a", sometimes), await make_backend("b")
    cfg = base_config(tmp_path, {}, [route("m")])
    cfg["backends"] = {"m": {"urls": [a.url, b.url],
                             "health": {"interval": "100ms", "timeout": "500ms", "unhealthy_after": 2,
                                        "healthy_after": 2}}}
    r = await make_router(cfg)
    async with aiohttp.ClientSession() as s:
        for _ in range(50):
            if [e["available"] for e in (await status(s, r.admin))["backends"]["m"]] == [False, True]:
                break
            await asyncio.sleep(0.05)
        a_before = len([x for x in a.seen if x["path"] != "/health"])
        for _ in range(10):
            async with s.get(r.url + "/x") as resp:
                assert resp.status == 200
        assert len([x for x in a.seen if x["path"] != "/health"]) == a_before
        healthy["value"] = True
        for _ in range(50):
            if [e["available"] for e in (await status(s, r.admin))["backends"]["m"]] == [True, True]:
                break
            await asyncio.sleep(0.05)
        for _ in range(10):
            async with s.get(r.url + "/x") as resp:
                assert resp.status == 200
    assert len([x for x in a.seen if x["path"] != "/health"]) == a_before + 5


async def test_candidate_without_healthy_endpoint_falls_back_to_primary(
        make_router: RouterFactory, make_backend: BackendFactory, tmp_path: Path) -> None:
    primary = await make_backend("primary")
    cfg = base_config(tmp_path, {"v1": primary.url, "v2": f"http://127.0.0.1:{free_port()}"},
                      [route("v1", candidate="v2", split={"candidate_percent": 100})])
    cfg["backends"]["v2"]["health"] = {"interval": "100ms", "unhealthy_after": 1}
    r = await make_router(cfg)
    async with aiohttp.ClientSession() as s:
        for _ in range(50):
            if not (await status(s, r.admin))["backends"]["v2"][0]["available"]:
                break
            await asyncio.sleep(0.05)
        for _ in range(10):
            async with s.post(r.url + "/x", data=b"{}") as resp:
                assert resp.status == 200 and resp.headers["X-Model-Backend"] == "v1"
        assert await metric(s, r.admin, 'router_candidate_fallbacks_total{route="m"}') == 10


async def closing_server(close_first: int) -> tuple[asyncio.Server, str, list[int]]:
    """Closes the first `close_first` requests without answering; answers the rest."""
    seen: list[int] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next((int(x.split(b":")[1]) for x in head.split(b"\r\n")
                               if x.lower().startswith(b"content-length")), 0)
                await reader.readexactly(length)
                seen.append(1)
                if len(seen) <= close_first:
                    writer.close()
                    return
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    port = free_port()
    server = await asyncio.start_server(handle, "127.0.0.1", port)
    return server, f"http://127.0.0.1:{port}", seen


async def test_retries_only_where_safe(make_router: RouterFactory, tmp_path: Path) -> None:
    server, url, seen = await closing_server(close_first=1)
    async with server:
        r = await make_router(base_config(tmp_path, {"m": url}, [route("m")]))
        async with aiohttp.ClientSession() as s:
            async with s.post(r.url + "/x", data=b"{}") as resp:
                assert resp.status == 502  # POST whose connection died after sending: not retried
            assert len(seen) == 1
        r.stop()  # before the server goes: its connections end cleanly
    server2, url2, seen2 = await closing_server(close_first=1)
    async with server2:
        r2 = await make_router(base_config(tmp_path / "2", {"m": url2}, [route("m")]))
        async with aiohttp.ClientSession() as s, s.get(r2.url + "/x") as resp:
            assert resp.status == 200 and await resp.read() == b"ok"  # GET: retried
        assert len(seen2) == 2
        r2.stop()


async def test_retry_budget_caps_extra_requests(make_router: RouterFactory, tmp_path: Path) -> None:
    server, url, seen = await closing_server(close_first=10_000)
    async with server:
        r = await make_router(base_config(tmp_path, {"m": url}, [route("m", retries=3)]))
        async with aiohttp.ClientSession() as s:
            for _ in range(50):
                async with s.get(r.url + "/x") as resp:
                    assert resp.status == 502
        r.stop()
    # 50 requests; retries limited to a burst of 10 plus 20% of requests
    assert 50 < len(seen) <= 50 + 10 + 10


async def test_saturated_backend_fails_fast_and_others_are_unaffected(
        make_router: RouterFactory, make_backend: BackendFactory, tmp_path: Path) -> None:
    release = asyncio.Event()

    async def hung(request: web.Request) -> web.StreamResponse:
        await release.wait()
        return web.json_response({})

    slow, fast = await make_backend("slow", hung), await make_backend("fast")
    cfg = base_config(tmp_path, {"slow": slow.url, "fast": fast.url},
                      [{"name": "slow", "match": {"path_prefix": "/slow"}, "primary": "slow", "timeout": "10s"},
                       {"name": "fast", "match": {"path_prefix": "/fast"}, "primary": "fast"}])
    cfg["backends"]["slow"].update({"max_connections": 2, "max_pending": 2})
    r = await make_router(cfg)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as s:
        stuck = [asyncio.create_task(s.post(r.url + "/slow", data=b"{}")) for _ in range(10)]
        # 2 reach the backend, 2 wait for a connection, the other 6 are refused at once
        await eventually(lambda: len(slow.seen) == 2 and sum(t.done() for t in stuck) >= 6, "6 refusals")
        done = [t for t in stuck if t.done()]
        assert len(done) == 6  # 2 connected + 2 waiting; the rest refused at once
        for t in done:
            resp = t.result()
            assert resp.status == 503 and "saturated" in (await resp.json())["error"]["message"]
            resp.release()
        for _ in range(20):
            async with s.get(r.url + "/fast") as resp:
                assert resp.status == 200
        release.set()
        for t in stuck:
            resp = await t
            assert resp.status in (200, 503)
            resp.release()


async def _all_available(s: aiohttp.ClientSession, admin: str) -> bool:
    return all(e["available"] for e in (await status(s, admin))["backends"]["m"])
