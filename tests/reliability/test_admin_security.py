"""The admin API: loopback by default, every change needs the token, no cross-site use, one change at a time."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from router.config import parse_config
from tests.helpers import TOKEN, RouterFactory, RouterProcess, base_config, free_port

AUTH = {"Authorization": f"Bearer {TOKEN}"}
MUTATING = ["/-/reload", "/-/routes/m/split", "/-/routes/fraud/promote", "/-/routes/fraud/rollback",
            "/-/routes/fraud/pause", "/-/routes/fraud/resume", "/-/routes/fraud/restart"]
SPLIT_BODY = {"candidate_percent": 40}


def admin_config(tmp_path: Path) -> dict[str, Any]:
    backends = {"v1": f"http://127.0.0.1:{free_port()}", "v2": f"http://127.0.0.1:{free_port()}"}
    policy = {"steps": [0, 50, 100], "interval": "1m", "min_samples": 50, "max_duration": "1h"}
    routes = [{"name": "m", "match": {"path_prefix": "/m"}, "primary": "v1", "candidate": "v2"},
              {"name": "fraud", "match": {"path_prefix": "/fraud"}, "primary": "v1", "candidate": "v2",
               "rollout": policy}]
    return base_config(tmp_path, backends, routes)


async def post_all(admin: str, headers: dict[str, str]) -> dict[str, tuple[int, Any]]:
    """POST every mutating path with `headers`: path -> (status, JSON body or text)."""
    out: dict[str, tuple[int, Any]] = {}
    async with aiohttp.ClientSession() as s:
        for path in MUTATING:
            async with s.post(admin + path, json=SPLIT_BODY, headers=headers) as resp:
                text = await resp.text()
                try:
                    body: Any = json.loads(text)
                except ValueError:
                    body = text
                out[path] = (resp.status, body)
    return out


async def split_of(admin: str) -> float:
    async with aiohttp.ClientSession() as s, s.get(admin + "/-/routes/m") as resp:
        assert resp.status == 200
        return float((await resp.json())["candidate_percent"])


def test_admin_listens_on_loopback_by_default() -> None:
    text = yaml.safe_dump({"listen": "0.0.0.0:8080", "backends": {"b": {"url": "http://127.0.0.1:9000"}},
                           "routes": [{"name": "m", "match": {"path_prefix": "/"}, "primary": "b"}]})
    config = parse_config(text)
    assert config.admin.listen.host == "127.0.0.1"


async def test_changes_without_a_token_get_401(make_router: RouterFactory, tmp_path: Path) -> None:
    r = await make_router(admin_config(tmp_path))

    answers = await post_all(r.admin, {})

    assert {path: status for path, (status, _) in answers.items()} == dict.fromkeys(MUTATING, 401)
    assert await split_of(r.admin) == 0.0


async def test_changes_with_a_wrong_token_get_401(make_router: RouterFactory, tmp_path: Path) -> None:
    r = await make_router(admin_config(tmp_path))
    wrong = [f"Bearer {TOKEN}x", f"Bearer {TOKEN[:-1]}", "Bearer ", f"Basic {TOKEN}", TOKEN, f"Bearer  {TOKEN} x"]

    for value in wrong:
        answers = await post_all(r.admin, {"Authorization": value})
        statuses = {path: status for path, (status, _) in answers.items()}
        assert statuses == dict.fromkeys(MUTATING, 401), f"Authorization: {value!r} -> {statuses}"
    assert await split_of(r.admin) == 0.0


async def test_changes_are_refused_with_403_when_no_token_is_configured(
        make_router: RouterFactory, tmp_path: Path) -> None:
    r = await make_router(admin_config(tmp_path), env={"ROUTER_ADMIN_TOKEN": ""})

    answers = await post_all(r.admin, AUTH)

    for path, (status, body) in answers.items():
        assert status == 403, (path, status, body)
        assert "no admin token configured" in body["error"]["message"], (path, body)
    assert await split_of(r.admin) == 0.0


async def test_get_on_a_mutating_path_is_405(make_router: RouterFactory, tmp_path: Path) -> None:
    r = await make_router(admin_config(tmp_path))

    async with aiohttp.ClientSession() as s:
        statuses = {}
        for path in MUTATING:
            async with s.get(r.admin + path, headers=AUTH) as resp:
                statuses[path] = resp.status

    assert statuses == dict.fromkeys(MUTATING, 405)


async def test_cross_origin_change_is_403_even_with_the_token(make_router: RouterFactory, tmp_path: Path) -> None:
    r = await make_router(admin_config(tmp_path))

    answers = await post_all(r.admin, {**AUTH, "Origin": "http://evil.example"})

    assert {path: status for path, (status, _) in answers.items()} == dict.fromkeys(MUTATING, 403)
    assert await split_of(r.admin) == 0.0


async def test_cross_site_fetch_is_403_even_with_the_token(make_router: RouterFactory, tmp_path: Path) -> None:
    r = await make_router(admin_config(tmp_path))

    answers = await post_all(r.admin, {**AUTH, "Sec-Fetch-Site": "cross-site"})

    assert {path: status for path, (status, _) in answers.items()} == dict.fromkeys(MUTATING, 403)
    assert await split_of(r.admin) == 0.0


async def _wait_for_reader(fifo: Path, timeout: float = 10.0) -> int:
    """Open the FIFO for writing once the router has opened it for reading; returns the fd."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        try:
            return os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as exc:
            if exc.errno != errno.ENXIO or loop.time() > deadline:
                raise
        await asyncio.sleep(0.02)


async def test_operator_action_while_another_runs_gets_409(make_router: RouterFactory, tmp_path: Path) -> None:
    r = await make_router(admin_config(tmp_path))
    # The config path becomes a FIFO: the reload blocks reading it, holding the operator lock,
    # until this test writes the YAML. No timing is involved.
    fifo = tmp_path / "config.fifo"
    os.mkfifo(fifo)
    os.replace(fifo, r.config_path)
    fd: int | None = None
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as s:
        async def post(path: str) -> int:
            async with s.post(r.admin + path, json=SPLIT_BODY, headers=AUTH) as resp:
                return resp.status

        first = asyncio.create_task(post("/-/reload"))
        try:
            fd = await _wait_for_reader(r.config_path)
            during = {path: await post(path) for path in ("/-/routes/m/split", "/-/reload", "/-/routes/fraud/pause")}
            os.set_blocking(fd, True)
            os.write(fd, yaml.safe_dump(r.config, sort_keys=False).encode())
            os.close(fd)
            fd = None
            first_status = await asyncio.wait_for(first, 10)
        finally:
            _release(r, fd)
        after = await post("/-/routes/m/split")

    assert during == {"/-/routes/m/split": 409, "/-/reload": 409, "/-/routes/fraud/pause": 409}
    assert first_status == 200
    assert after == 200


def _release(r: RouterProcess, fd: int | None) -> None:
    if fd is not None:
        os.close(fd)
    with contextlib.suppress(OSError):
        os.close(os.open(r.config_path, os.O_WRONLY | os.O_NONBLOCK))
    r.write(r.config)  # a regular file again


async def test_concurrent_reloads_are_serialised(make_router: RouterFactory, tmp_path: Path) -> None:
    cfg = admin_config(tmp_path)
    r = await make_router(cfg)
    # A bigger file makes each reload take long enough for the others to collide with it.
    cfg["routes"] += [{"name": f"r{i}", "match": {"path": f"/r/{i}"}, "primary": "v1"} for i in range(1500)]
    r.write(cfg)

    async with aiohttp.ClientSession() as s:
        async def reload() -> int:
            async with s.post(r.admin + "/-/reload", headers=AUTH) as resp:
                return resp.status

        statuses = await asyncio.gather(*(reload() for _ in range(20)))
        async with s.get(r.admin + "/-/status") as resp:
            status = await resp.json()

    assert set(statuses) <= {200, 409}, statuses
    assert statuses.count(200) >= 1
    assert status["reload"] == {"last_ok": True, "last_error": None, "ok": statuses.count(200), "failed": 0}
    assert len(status["routes"]) == len(cfg["routes"])


async def test_split_state_file_is_written_whole(make_router: RouterFactory, tmp_path: Path) -> None:
    r = await make_router(admin_config(tmp_path))
    state_dir = Path(r.config["state_dir"])

    async with aiohttp.ClientSession() as s:
        for percent in (10, 25, 40):
            async with s.post(r.admin + "/-/routes/m/split", json={"candidate_percent": percent},
                              headers=AUTH) as resp:
                assert resp.status == 200

    state = json.loads((state_dir / "state.json").read_text())
    assert state["splits"]["m"]["percent"] == 40
    leftovers = [p.name for p in state_dir.iterdir() if p.name.startswith(".") or p.name.endswith(".tmp")]
    assert leftovers == []
