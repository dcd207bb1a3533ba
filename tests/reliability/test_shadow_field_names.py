"""Shadow output field names are capped in length and number before they become metric labels or
report keys; the rest are folded into one "(other)" field."""

from __future__ import annotations

import asyncio
import json
import re
import time
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from router.control.shadowstats import MAX_FIELD_NAME, MAX_FIELDS
from tests.helpers import BackendFactory, RouterFactory, RouterProcess, base_config

LONG_KEYS = [f"{i}" + "x" * 20_000 for i in range(5)]  # data used as keys by a careless backend
SHORT_KEYS = [f"k{i}" for i in range(MAX_FIELDS + 50)]
FIELD_LABEL = re.compile(r'^router_shadow_field_comparisons_total\{[^}]*field="([^"]*)"', re.MULTILINE)


def output(version: int) -> dict[str, Any]:
    return {**dict.fromkeys(LONG_KEYS, version), **dict.fromkeys(SHORT_KEYS, version)}


async def start(make_router: RouterFactory, make_backend: BackendFactory, tmp_path: Path) -> RouterProcess:
    def answer(version: int) -> Any:
        async def handler(request: web.Request) -> web.Response:
            return web.json_response(output(version))
        return handler

    v1, v2 = await make_backend("v1", answer(1)), await make_backend("v2", answer(2))
    route = {"name": "m", "match": {"path_prefix": "/m"}, "primary": "v1",
             "shadow": {"backend": "v2", "max_concurrency": 100_000,  # pacing never drops one of the 3 copies
                        "compare": {"format": "json"}}}
    r = await make_router(base_config(tmp_path, {"v1": v1.url, "v2": v2.url}, [route]))
    async with aiohttp.ClientSession() as s:
        for _ in range(3):
            async with s.post(r.url + "/m", json={}) as resp:
                assert resp.status == 200
        deadline = time.monotonic() + 15
        while True:
            async with s.get(r.admin + "/-/routes/m/shadow") as resp:
                if (await resp.json())["compared"] >= 3:
                    return r
            assert time.monotonic() < deadline, "the shadow comparisons never completed"
            await asyncio.sleep(0.05)


async def fetch(r: RouterProcess, path: str) -> str:
    async with aiohttp.ClientSession() as s, s.get(r.admin + path) as resp:
        assert resp.status == 200
        return await resp.text()


async def test_long_field_names_never_become_metric_labels(
        make_router: RouterFactory, make_backend: BackendFactory, tmp_path: Path) -> None:
    r = await start(make_router, make_backend, tmp_path)

    labels = FIELD_LABEL.findall(await fetch(r, "/metrics"))

    assert labels and max(len(label) for label in labels) <= MAX_FIELD_NAME
    assert "(other)" in labels


async def test_shadow_fields_are_bounded_in_number(
        make_router: RouterFactory, make_backend: BackendFactory, tmp_path: Path) -> None:
    r = await start(make_router, make_backend, tmp_path)

    labels = set(FIELD_LABEL.findall(await fetch(r, "/metrics")))

    assert len(labels) <= MAX_FIELDS + 1  # the tracked ones and "(other)"


async def test_long_field_names_never_become_report_keys(
        make_router: RouterFactory, make_backend: BackendFactory, tmp_path: Path) -> None:
    r = await start(make_router, make_backend, tmp_path)

    report = json.loads(await fetch(r, "/-/routes/m/shadow"))

    names = [f["field"] for f in report["fields"]]
    assert max(len(name) for name in names) <= MAX_FIELD_NAME
    other = next(f for f in report["fields"] if f["field"] == "(other)")
    assert other["samples"] == report["compared"]  # one folded sample per comparison
