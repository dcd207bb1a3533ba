"""Traffic policy end to end: sticky across processes and restarts, runtime splits, blue/green."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp

from tests.helpers import TOKEN, BackendFactory, RouterFactory, base_config

AUTH = {"Authorization": f"Bearer {TOKEN}"}


def split_route(percent: float, **split: Any) -> dict[str, Any]:
    return {"name": "fraud", "match": {"path_prefix": "/v1/models/fraud"}, "primary": "v1", "candidate": "v2",
            "split": {"candidate_percent": percent, **split},
            "overrides": [{"match": {"headers": {"X-Model-Version": "v2"}}, "backend": "v2"},
                          {"match": {"query": {"model": "v1"}}, "backend": "v1"}]}


async def backends(make_backend: BackendFactory) -> dict[str, str]:
    return {"v1": (await make_backend("v1")).url, "v2": (await make_backend("v2")).url}


async def assignments(s: aiohttp.ClientSession, url: str, keys: list[str]) -> dict[str, str]:
    out = {}
    for key in keys:
        async with s.post(url + "/v1/models/fraud:predict", json={}, headers={"X-User-Id": key}) as r:
            assert r.status == 200
            out[key] = r.headers["X-Model-Backend"]
    return out


async def test_sticky_across_two_processes_and_a_restart(
        make_router: RouterFactory, make_backend: BackendFactory, tmp_path: Path) -> None:
    urls = await backends(make_backend)
    cfg = base_config(tmp_path, urls, [split_route(30, sticky="header:X-User-Id")])
    r1 = await make_router(cfg)
    r2 = await make_router(base_config(tmp_path / "other", urls, [split_route(30, sticky="header:X-User-Id")]))
    keys = [f"user-{i}" for i in range(120)]
    async with aiohttp.ClientSession() as s:
        first = await assignments(s, r1.url, keys)
        assert await assignments(s, r1.url, keys) == first  # same key, same backend
        assert await assignments(s, r2.url, keys) == first  # another process agrees
        assert 10 < sum(b == "v2" for b in first.values()) < 70
        r1.stop()
        r1 = await make_router(cfg)
        assert await assignments(s, r1.url, keys) == first  # and after a restart
        # support can ask without sending a prediction
        for key in keys[:10]:
            async with s.get(r1.admin + "/-/routes/fraud/assign", params={"key": key}) as r:
                assert (await r.json())["backend"] == first[key]
        async with s.get(r1.admin + "/-/routes/fraud/assign") as r:
            assert r.status == 400
        async with s.get(r1.admin + "/-/routes/nope/assign", params={"key": "k"}) as r:
            assert r.status == 404


async def test_runtime_split_is_monotone_persisted_and_reset_by_yaml(
        make_router: RouterFactory, make_backend: BackendFactory, tmp_path: Path) -> None:
    urls = await backends(make_backend)
    cfg = base_config(tmp_path, urls, [split_route(5, sticky="header:X-User-Id")])
    r = await make_router(cfg)
    keys = [f"k{i}" for i in range(150)]
    async with aiohttp.ClientSession() as s:
        at5 = await assignments(s, r.url, keys)
        async with s.post(r.admin + "/-/routes/fraud/split", json={"candidate_percent": 25}, headers=AUTH) as resp:
            assert resp.status == 200, await resp.text()
        at25 = await assignments(s, r.url, keys)
        moved = {k for k in keys if at5[k] != at25[k]}
        assert all(at5[k] == "v1" and at25[k] == "v2" for k in moved) and moved
        assert {k for k in keys if at5[k] == "v2"} <= {k for k in keys if at25[k] == "v2"}
        # errors: no token, bad token, bad body, out of range, unknown route
        for headers, body, status in [({}, {"candidate_percent": 1}, 401),
                                      ({"Authorization": "Bearer wrong"}, {"candidate_percent": 1}, 401),
                                      (AUTH, {"candidate_percent": "x"}, 400),
                                      (AUTH, {"candidate_percent": 101}, 400)]:
            async with s.post(r.admin + "/-/routes/fraud/split", json=body, headers=headers) as resp:
                assert resp.status == status
                assert "error" in await resp.json()
        async with s.post(r.admin + "/-/routes/nope/split", json={"candidate_percent": 1}, headers=AUTH) as resp:
            assert resp.status == 404
        # survives a restart
        r.stop()
        r = await make_router(cfg)
        async with s.get(r.admin + "/-/routes/fraud") as resp:
            info = await resp.json()
        assert info["candidate_percent"] == 25 and info["runtime_split"] is True
        assert await assignments(s, r.url, keys) == at25
        # the YAML's value applies again once the YAML changes that route
        r.stop()
        cfg["routes"] = [split_route(50, sticky="header:X-User-Id")]
        r = await make_router(cfg)
        async with s.get(r.admin + "/-/routes/fraud") as resp:
            info = await resp.json()
        assert info["candidate_percent"] == 50 and info["runtime_split"] is False


async def test_overrides_and_counts(make_router: RouterFactory, make_backend: BackendFactory, tmp_path: Path) -> None:
    urls = await backends(make_backend)
    r = await make_router(base_config(tmp_path, urls, [split_route(0, sticky="header:X-User-Id")]))
    async with aiohttp.ClientSession() as s:
        for _ in range(3):
            async with s.post(r.url + "/v1/models/fraud:predict", headers={"X-Model-Version": "v2"}) as resp:
                assert resp.headers["X-Model-Backend"] == "v2"
        async with s.post(r.url + "/v1/models/fraud:predict?model=v1") as resp:
            assert resp.headers["X-Model-Backend"] == "v1"
        async with s.get(r.admin + "/-/status") as resp:
            route = (await resp.json())["routes"][0]
        assert route["requests_by_backend"] == {"v1": 1, "v2": 3}
        assert route["sticky_key_missing"] == 0  # overrides decide before the split
        async with s.get(r.admin + "/metrics") as resp:
            text = await resp.text()
        assert 'router_requests_total{backend="v2",code="2xx",route="fraud"} 3.0' in text
        assert 'router_backend_choices_total{backend="v2",reason="override",route="fraud"} 3.0' in text


async def test_missing_sticky_key_is_drawn_and_counted(
        make_router: RouterFactory, make_backend: BackendFactory, tmp_path: Path) -> None:
    urls = await backends(make_backend)
    r = await make_router(base_config(tmp_path, urls, [split_route(50, sticky="cookie:uid")]))
    async with aiohttp.ClientSession() as s:
        seen = set()
        for _ in range(40):
            async with s.post(r.url + "/v1/models/fraud:predict") as resp:
                seen.add(resp.headers["X-Model-Backend"])
        assert seen == {"v1", "v2"}  # at 50%, 40 draws all one way has probability 2**-39
        async with s.get(r.admin + "/metrics") as resp:
            assert 'router_sticky_key_missing_total{route="fraud"} 40.0' in await resp.text()


async def test_blue_green_switch_is_atomic_under_traffic(
        make_router: RouterFactory, make_backend: BackendFactory, tmp_path: Path) -> None:
    urls = await backends(make_backend)
    r = await make_router(base_config(tmp_path, urls, [split_route(0)]))
    log: list[tuple[int, int, str]] = []  # (generation at send, status, backend)
    generation = 0
    stop = asyncio.Event()

    async def client(s: aiohttp.ClientSession) -> None:
        while not stop.is_set():
            sent_in = generation
            async with s.post(r.url + "/v1/models/fraud:predict", json={"x": 1}) as resp:
                await resp.read()
                log.append((sent_in, resp.status, resp.headers.get("X-Model-Backend", "")))

    async with aiohttp.ClientSession() as s:
        clients = [asyncio.create_task(client(s)) for _ in range(8)]
        await asyncio.sleep(0.5)
        async with s.post(r.admin + "/-/routes/fraud/split", json={"candidate_percent": 100}, headers=AUTH) as resp:
            assert resp.status == 200
        generation = 1  # requests sent from now on were sent after the switch returned
        await asyncio.sleep(0.5)
        stop.set()
        await asyncio.gather(*clients)
    assert all(status == 200 for _, status, _ in log)
    before = [b for g, _, b in log if g == 0]
    after = [b for g, _, b in log if g == 1]
    assert before and after
    assert set(after) == {"v2"}
    assert "v1" in before
