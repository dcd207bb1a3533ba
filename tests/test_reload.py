"""Hot reload on SIGHUP and POST /-/reload, and the graceful drain on SIGTERM."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from aiohttp import web

from tests.helpers import TOKEN, BackendFactory, RouterFactory, base_config, eventually

AUTH = {"Authorization": f"Bearer {TOKEN}"}


def one_route(backend: str) -> list[dict[str, Any]]:
    return [{"name": "m", "match": {"path_prefix": "/v1/models/m"}, "primary": backend}]


async def metric(s: aiohttp.ClientSession, admin: str, name: str) -> float:
    async with s.get(admin + "/metrics") as r:
        for line in (await r.text()).splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"metric {name} not found")


async def test_sighup_under_load_never_fails_a_request(
        make_router: RouterFactory, make_backend: BackendFactory, tmp_path: Path) -> None:
    urls = {n: (await make_backend(n)).url for n in ("a1", "a2", "b1")}
    config_a = base_config(tmp_path, {"a1": urls["a1"], "a2": urls["a2"]}, one_route("a1"))
    config_b = {**config_a, "backends": {"a1": {"url": urls["a1"]}, "b1": {"url": urls["b1"]}},
                "routes": one_route("b1")}
    r = await make_router(config_a)
    results: list[tuple[int, str]] = []
    stop = asyncio.Event()

    async def client(s: aiohttp.ClientSession) -> None:
        while not stop.is_set():
            async with s.post(r.url + "/v1/models/m:predict", json={"instances": [[1, 2, 3, 4]]}) as resp:
                await resp.read()
                results.append((resp.status, resp.headers.get("X-Model-Backend", "")))

    corrupt_sent = 0
    async with aiohttp.ClientSession() as s:
        clients = [asyncio.create_task(client(s)) for _ in range(6)]
        for i in range(15):
            if i % 3 == 2:
                r.write("listen: [unclosed\n")
                corrupt_sent += 1
            else:
                r.write(yaml.safe_dump(config_a if i % 3 == 0 else config_b))
            r.signal(signal.SIGHUP)
            await asyncio.sleep(0.2)
        stop.set()
        await asyncio.gather(*clients)
        failed = await metric(s, r.admin, 'router_config_reloads_total{result="failure"}')
        async with s.get(r.admin + "/-/status") as resp:
            status = await resp.json()
    assert len(results) > 100
    assert {code for code, _ in results} == {200}
    assert {backend for _, backend in results} <= {"a1", "b1"}
    assert failed == corrupt_sent == 5
    assert status["reload"]["last_ok"] is False and "YAML syntax" in status["reload"]["last_error"]


async def test_reload_endpoint_reports_errors_and_keeps_serving(
        make_router: RouterFactory, make_backend: BackendFactory, tmp_path: Path) -> None:
    a, b = await make_backend("a"), await make_backend("b")
    cfg = base_config(tmp_path, {"a": a.url, "b": b.url}, one_route("a"))
    r = await make_router(cfg)
    async with aiohttp.ClientSession() as s:
        async with s.post(r.admin + "/-/reload") as resp:
            assert resp.status == 401
        r.write({**cfg, "routes": [{**one_route("a")[0], "primary": "zzz"}]})
        async with s.post(r.admin + "/-/reload", headers=AUTH) as resp:
            assert resp.status == 400
            body = await resp.json()
        assert body["ok"] is False
        assert f"{r.config_path}:" in body["message"] and "routes[0].primary: unknown backend 'zzz'" in body["message"]
        assert await metric(s, r.admin, "router_config_last_reload_successful") == 0
        async with s.post(r.url + "/v1/models/m:predict") as resp:
            assert resp.status == 200 and resp.headers["X-Model-Backend"] == "a"
        r.write({**cfg, "routes": one_route("b")})
        async with s.post(r.admin + "/-/reload", headers=AUTH) as resp:
            assert resp.status == 200 and (await resp.json())["ok"] is True
        assert await metric(s, r.admin, "router_config_last_reload_successful") == 1
        async with s.post(r.url + "/v1/models/m:predict") as resp:
            assert resp.headers["X-Model-Backend"] == "b"


async def test_unchanged_backend_keeps_its_connections(
        make_router: RouterFactory, make_backend: BackendFactory, tmp_path: Path) -> None:
    peers: list[int] = []

    async def who(request: web.Request) -> web.StreamResponse:
        peername = request.transport.get_extra_info("peername") if request.transport else None
        peers.append(peername[1] if peername else -1)
        return web.json_response({})

    a = await make_backend("a", who)
    c = await make_backend("c")
    cfg = base_config(tmp_path, {"a": a.url}, one_route("a"))
    r = await make_router(cfg)
    async with aiohttp.ClientSession() as s:
        async with s.post(r.url + "/v1/models/m:predict") as resp:
            assert resp.status == 200
        # add a backend and a route: "a" is unchanged, so its keep-alive connection survives
        cfg2 = {**cfg, "backends": {**cfg["backends"], "c": {"url": c.url}},
                "routes": [*one_route("a"), {"name": "c", "match": {"path_prefix": "/c"}, "primary": "c"}]}
        r.write(cfg2)
        async with s.post(r.admin + "/-/reload", headers=AUTH) as resp:
            assert resp.status == 200
        async with s.post(r.url + "/v1/models/m:predict") as resp:
            assert resp.status == 200
    assert len(peers) == 2 and peers[0] == peers[1]


async def test_sigterm_drains_requests_in_flight(
        make_router: RouterFactory, make_backend: BackendFactory, tmp_path: Path) -> None:
    arrived = asyncio.Event()

    async def slow(request: web.Request) -> web.StreamResponse:
        arrived.set()
        await asyncio.sleep(1.0)  # the request is in flight for this long
        return web.json_response({"slow": True})

    b = await make_backend("slow", slow)
    r = await make_router(base_config(tmp_path, {"slow": b.url}, one_route("slow")))
    host, port = r.host_port
    async with aiohttp.ClientSession() as s:
        in_flight = asyncio.create_task(s.post(r.url + "/v1/models/m:predict"))
        async with asyncio.timeout(10):
            await arrived.wait()
        r.signal(signal.SIGTERM)
        await eventually(lambda: _refused(host, port), "the listener to close")  # refused, not reset mid-request
        resp = await in_flight
        assert resp.status == 200 and (await resp.json()) == {"slow": True}
        assert resp.headers.get("Connection", "").lower() == "close"
        resp.release()
    assert r.proc is not None
    assert await asyncio.to_thread(r.proc.wait, 10) == 0


async def _refused(host: str, port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection(host, port)
    except OSError:
        return True
    writer.close()
    return False
