"""DNS rebinding and open reads: the admin API answers only under names of its own listener, can
require the token for reads, and says at start when it has no token."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from router.config import ConfigError, parse_config
from tests.helpers import TOKEN, RouterFactory, RouterProcess, base_config, free_port

AUTH = {"Authorization": f"Bearer {TOKEN}"}
REBOUND = "rebind.attacker.example"
READS = ["/-/status", "/-/routes/m/diffs", "/metrics", "/-/routes/m/rollout", "/"]


def config(tmp_path: Path, **admin: Any) -> dict[str, Any]:
    backends = {"v1": f"http://127.0.0.1:{free_port()}", "v2": f"http://127.0.0.1:{free_port()}"}
    policy = {"steps": [0, 50, 100], "interval": "1m", "min_samples": 50, "max_duration": "1h"}
    routes = [{"name": "m", "match": {"path_prefix": "/m"}, "primary": "v1", "candidate": "v2",
               "shadow": {"backend": "v2", "percent": 0}, "rollout": policy}]
    cfg = base_config(tmp_path, backends, routes)
    cfg["admin"].update(admin)
    return cfg


async def get(r: RouterProcess, path: str, headers: dict[str, str]) -> tuple[int, bytes]:
    async with aiohttp.ClientSession() as s, s.get(r.admin + path, headers=headers) as resp:
        return resp.status, await resp.read()


@pytest.mark.parametrize("path", READS)
async def test_reads_under_a_rebound_host_name_are_refused(
        make_router: RouterFactory, tmp_path: Path, path: str) -> None:
    r = await make_router(config(tmp_path))

    status, body = await get(r, path, {"Host": REBOUND, "Origin": f"http://{REBOUND}"})

    assert status == 403, body[:300]
    assert "admin.allowed_hosts" in json.loads(body)["error"]["message"]


async def test_reads_under_ip_literals_and_localhost_are_served(make_router: RouterFactory, tmp_path: Path) -> None:
    r = await make_router(config(tmp_path))
    port = r.config["admin"]["listen"].rsplit(":", 1)[1]
    hosts = [f"127.0.0.1:{port}", "127.0.0.1", "localhost:8443", "LOCALHOST.", "[::1]:9", "10.1.2.3:9901"]

    statuses = {host: (await get(r, "/-/status", {"Host": host}))[0] for host in hosts}

    assert statuses == dict.fromkeys(hosts, 200)


async def test_reads_under_a_configured_host_name_are_served(make_router: RouterFactory, tmp_path: Path) -> None:
    r = await make_router(config(tmp_path, allowed_hosts=["router-admin.internal"]))

    status, body = await get(r, "/-/status", {"Host": "Router-Admin.Internal:9901"})

    assert status == 200, body[:300]


async def test_healthz_answers_under_any_host_name(make_router: RouterFactory, tmp_path: Path) -> None:
    r = await make_router(config(tmp_path, read_token=True))

    status, body = await get(r, "/-/healthz", {"Host": "model-router-admin.svc"})

    assert status == 200, body[:300]


@pytest.mark.parametrize("path", READS)
async def test_read_token_makes_reads_need_the_token(make_router: RouterFactory, tmp_path: Path, path: str) -> None:
    r = await make_router(config(tmp_path, read_token=True))

    without, _ = await get(r, path, {})
    wrong, _ = await get(r, path, {"Authorization": "Bearer nope"})
    given, body = await get(r, path, AUTH)

    assert (without, wrong, given) == (401, 401, 200), body[:300]


async def test_reads_are_open_without_read_token(make_router: RouterFactory, tmp_path: Path) -> None:
    r = await make_router(config(tmp_path))

    status, _ = await get(r, "/-/status", {})

    assert status == 200


async def test_start_without_an_admin_token_warns(make_router: RouterFactory, tmp_path: Path) -> None:
    r = await make_router(config(tmp_path), env={"ROUTER_ADMIN_TOKEN": ""})
    r.stop()

    assert "no admin token" in "".join(r.output)


async def test_start_with_an_admin_token_does_not_warn(make_router: RouterFactory, tmp_path: Path) -> None:
    r = await make_router(config(tmp_path))
    r.stop()

    assert "no admin token" not in "".join(r.output)


def parse_admin(admin: dict[str, Any]) -> None:
    parse_config(yaml.safe_dump({"admin": admin, "backends": {"b": {"url": "http://127.0.0.1:9000"}},
                                 "routes": [{"name": "m", "match": {"path_prefix": "/"}, "primary": "b"}]}))


@pytest.mark.parametrize("hosts", [["admin:9901"], ["http://admin"], [""], ["a b"], "admin", [1]])
def test_allowed_hosts_must_be_bare_host_names(hosts: Any) -> None:
    with pytest.raises(ConfigError, match=r"admin\.allowed_hosts"):
        parse_admin({"allowed_hosts": hosts})


def test_read_token_needs_a_token_env() -> None:
    with pytest.raises(ConfigError, match=r"admin\.read_token: needs a token"):
        parse_admin({"token_env": "", "read_token": True})
