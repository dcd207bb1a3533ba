"""`workers: N`: several processes share the data port under one supervisor and one admin address."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from router.config import ConfigError, parse_config
from tests.helpers import TOKEN, BackendFactory, RouterFactory, RouterProcess, base_config, eventually, get_json

AUTH = {"Authorization": f"Bearer {TOKEN}"}


def routes(*extra: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"name": "api", "match": {"path_prefix": "/api"}, "primary": "a"}, *extra]


async def requests_by_worker(s: aiohttp.ClientSession, r: RouterProcess) -> tuple[dict[str, float], str]:
    async with s.get(r.admin + "/metrics") as resp:
        text = await resp.text()
    counts: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("router_requests_total{"):
            worker = line.split('worker="')[1].split('"')[0]
            counts[worker] = counts.get(worker, 0) + float(line.rsplit(" ", 1)[1])
    return counts, text


async def send(r: RouterProcess, path: str, n: int) -> list[int]:
    # a new connection each time, so that the kernel spreads them over the workers
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as s:
        statuses = []
        for _ in range(n):
            async with s.get(r.url + path) as resp:
                await resp.read()
                statuses.append(resp.status)
        return statuses


async def test_workers_share_the_port_and_one_admin_sums_them(make_router: RouterFactory,
                                                              make_backend: BackendFactory, tmp_path: Path) -> None:
    a = await make_backend("a")
    r = await make_router(base_config(tmp_path, {"a": a.url}, routes(), workers=2))
    assert await send(r, "/api/x", 100) == [200] * 100
    async with aiohttp.ClientSession() as s:
        counts, text = await requests_by_worker(s, r)
        assert sum(counts.values()) == 100 and set(counts) == {"0", "1"}, counts  # both served, none lost
        promtool = shutil.which("promtool")
        assert promtool, "promtool is installed by `make deps` (Debian package prometheus)"
        check = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30)
        assert check.returncode == 0, check.stdout + check.stderr
        health = await get_json(s, r.admin + "/-/healthz")
        assert health == {"status": "ok", "workers": {"0": 200, "1": 200}}
        status = await get_json(s, r.admin + "/-/status")  # other admin calls reach a worker
        assert [route["name"] for route in status["routes"]] == ["api"]


async def test_a_dead_worker_is_restarted(make_router: RouterFactory, make_backend: BackendFactory,
                                          tmp_path: Path) -> None:
    a = await make_backend("a")
    r = await make_router(base_config(tmp_path, {"a": a.url}, routes(), workers=2))
    async with aiohttp.ClientSession() as s:
        before = (await get_json(s, r.admin + "/-/workers"))["workers"]
        os.kill(before[1]["pid"], signal.SIGKILL)

        async def restarted() -> dict[str, Any] | None:
            w = (await get_json(s, r.admin + "/-/workers"))["workers"][1]
            return w if w["restarts"] == 1 and w["alive"] and w["pid"] != before[1]["pid"] else None
        w = await eventually(restarted, "worker 1 to be restarted", timeout=30)
        assert w["exit_codes"] == [-signal.SIGKILL]
        await eventually(lambda: _healthy(s, r), "both workers healthy again", timeout=30)
    assert await send(r, "/api/x", 20) == [200] * 20


async def _healthy(s: aiohttp.ClientSession, r: RouterProcess) -> bool:
    async with s.get(r.admin + "/-/healthz") as resp:
        return resp.status == 200 and set((await resp.json())["workers"].values()) == {200}


async def test_reload_reaches_every_worker_and_a_broken_file_changes_none(
        make_router: RouterFactory, make_backend: BackendFactory, tmp_path: Path) -> None:
    a, b = await make_backend("a"), await make_backend("b")
    cfg = base_config(tmp_path, {"a": a.url, "b": b.url}, routes(), workers=2)
    r = await make_router(cfg)
    r.write(r.config_path.read_text().replace("backends:", "backends: [oops\n"))
    async with aiohttp.ClientSession() as s, s.post(r.admin + "/-/reload", headers=AUTH) as resp:
        body = await resp.json()
        assert resp.status == 400 and not body["ok"]
        assert [w["status"] for w in body["workers"]] == [400, 400]  # each validated, none applied it
    assert set(await send(r, "/new", 10)) == {404}
    r.signal(signal.SIGHUP)  # still broken: the supervisor checks it and signals no worker
    await eventually(lambda: _reloads(r, {"signalled": 0, "refused": 1}), "the supervisor to refuse the file")
    r.write({**cfg, "routes": routes({"name": "new", "match": {"path_prefix": "/new"}, "primary": "b"})})
    r.signal(signal.SIGHUP)  # the supervisor passes it to every worker
    await eventually(lambda: _only(r, "/new", 200), "every worker to serve the new route", timeout=20)
    assert len(b.seen) >= 30
    async with aiohttp.ClientSession() as s:
        reload = (await get_json(s, r.admin + "/-/status"))["reload"]
        assert (reload["ok"], reload["failed"]) == (1, 1)  # the POST failed, the broken SIGHUP never arrived
    pids = [w["pid"] for w in (await _workers(r))]
    assert r.stop() == 0  # SIGTERM: every worker drains and exits, then the supervisor
    assert "is invalid, no worker reloads" in "".join(r.output)
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


async def _reloads(r: RouterProcess, expected: dict[str, int]) -> bool:
    async with aiohttp.ClientSession() as s:
        return bool((await get_json(s, r.admin + "/-/workers"))["reloads"] == expected)


async def _only(r: RouterProcess, path: str, status: int) -> bool:
    return set(await send(r, path, 30)) == {status}


async def _workers(r: RouterProcess) -> list[dict[str, Any]]:
    async with aiohttp.ClientSession() as s:
        return list((await get_json(s, r.admin + "/-/workers"))["workers"])


def test_workers_without_a_cluster_are_refused_for_routes_whose_state_must_agree() -> None:
    text = ("listen: 127.0.0.1:8080\nbackends: {a: {url: 'http://127.0.0.1:1'}, b: {url: 'http://127.0.0.1:2'}}\n"
            "routes:\n  - {name: r, match: {path_prefix: /}, primary: a, candidate: b}\nworkers: 2\n")
    with pytest.raises(ConfigError) as err:
        parse_config(text, "w.yaml")
    assert str(err.value).startswith("w.yaml:5: workers: 2 processes need a `cluster` block: routes r")
    assert parse_config(text.replace(", candidate: b", ""), "w.yaml").workers == 2  # nothing to agree on
    clustered = parse_config(text + "cluster: {name: c, redis_url: 'redis://127.0.0.1:6379/0'}\n", "w.yaml")
    assert clustered.workers == 2 and clustered.cluster is not None and clustered.cluster.prefix == "mr:c:"
