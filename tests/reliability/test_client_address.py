"""X-Forwarded-For counts only through trusted hops: what stickiness by client uses."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp

from tests.helpers import BackendFactory, RouterFactory, base_config


def client_sticky(hops: int, tmp_path: Path, urls: dict[str, str]) -> dict[str, Any]:
    routes = [{"name": "m", "match": {"path_prefix": "/"}, "primary": "v1", "candidate": "v2",
               "split": {"candidate_percent": 50, "sticky": "client"}}]
    return base_config(tmp_path, urls, routes, proxy={"trusted_hops": hops})


async def expected(s: aiohttp.ClientSession, admin: str, key: str) -> str:
    async with s.get(admin + "/-/routes/m/assign", params={"key": key}) as r:
        return str((await r.json())["backend"])


async def served(s: aiohttp.ClientSession, url: str, xff: str | None) -> str:
    headers = {"X-Forwarded-For": xff} if xff else {}
    async with s.get(url + "/x", headers=headers) as r:
        return r.headers["X-Model-Backend"]


async def test_untrusted_x_forwarded_for_cannot_pick_the_model(
        make_router: RouterFactory, make_backend: BackendFactory, tmp_path: Path) -> None:
    urls = {"v1": (await make_backend("v1")).url, "v2": (await make_backend("v2")).url}
    r = await make_router(client_sticky(0, tmp_path, urls))
    async with aiohttp.ClientSession() as s:
        mine = await expected(s, r.admin, "127.0.0.1")
        spoofed = {await served(s, r.url, f"10.0.{i}.{i}") for i in range(40)}
        assert spoofed == {mine}  # the peer decides, whatever the header claims


async def test_trusted_hops_take_the_address_the_proxy_saw(
        make_router: RouterFactory, make_backend: BackendFactory, tmp_path: Path) -> None:
    urls = {"v1": (await make_backend("v1")).url, "v2": (await make_backend("v2")).url}
    r = await make_router(client_sticky(1, tmp_path, urls))
    async with aiohttp.ClientSession() as s:
        keys = [f"203.0.113.{i}" for i in range(30)]
        for key in keys:
            want = await expected(s, r.admin, key)
            assert await served(s, r.url, key) == want
            # an extra entry the client put in front does not count: only one hop is trusted
            assert await served(s, r.url, f"198.51.100.7, {key}") == want
        assert {await expected(s, r.admin, k) for k in keys} == {"v1", "v2"}
