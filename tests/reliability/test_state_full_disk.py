"""A state file save that cannot complete (a nearly full disk) keeps the previous file and says so."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.helpers import TOKEN, RouterProcess, base_config, free_port
from tests.reliability.rlimits import LimitedFactory, limited_routers

AUTH = {"Authorization": f"Bearer {TOKEN}"}
FSIZE = 2048  # bytes per file: a few splits fit, thirty do not


@pytest.fixture
async def make_limited(tmp_path: Path) -> AsyncIterator[LimitedFactory]:
    async with limited_routers(tmp_path) as make:
        yield make


def config(tmp_path: Path) -> dict[str, Any]:
    backends = {"v1": f"http://127.0.0.1:{free_port()}", "v2": f"http://127.0.0.1:{free_port()}"}
    routes = [{"name": f"m{i}", "match": {"path_prefix": f"/m{i}/"}, "primary": "v1", "candidate": "v2"}
              for i in range(30)]
    return base_config(tmp_path, backends, routes)


async def fill_until_a_save_fails(r: RouterProcess) -> tuple[str, int]:
    """Set splits one route at a time; returns the state file as it was before the first failure."""
    state = Path(r.config["state_dir"]) / "state.json"
    last_good = ""
    async with aiohttp.ClientSession() as s:
        for i in range(30):
            async with s.post(f"{r.admin}/-/routes/m{i}/split", json={"candidate_percent": 10},
                              headers=AUTH) as resp:
                if resp.status != 200:
                    body = await resp.json()
                    assert "could not persist" in body["error"]["message"], body
                    return last_good, i
            last_good = state.read_text()
            try:
                json.loads(last_good)
            except ValueError:
                raise AssertionError(f"split m{i} answered 200 but left a torn state file: {last_good[-80:]!r}") from None
    raise AssertionError(f"thirty splits fitted in {FSIZE} bytes: the test needs a smaller cap")


async def test_failed_state_save_keeps_the_previous_file(make_limited: LimitedFactory, tmp_path: Path) -> None:
    r = await make_limited(config(tmp_path), f"--fsize={FSIZE}")

    last_good, failed_at = await fill_until_a_save_fails(r)

    state_dir = Path(r.config["state_dir"])
    assert failed_at > 1
    assert (state_dir / "state.json").read_text() == last_good
    assert len(json.loads(last_good)["splits"]) == failed_at
    assert [p.name for p in state_dir.iterdir() if p.name.endswith(".tmp")] == []


async def test_failed_state_save_is_reported(make_limited: LimitedFactory, tmp_path: Path) -> None:
    r = await make_limited(config(tmp_path), f"--fsize={FSIZE}")

    await fill_until_a_save_fails(r)

    async with aiohttp.ClientSession() as s:
        async with s.get(r.admin + "/-/status") as resp:
            problem = (await resp.json())["state_problem"]
        async with s.get(r.admin + "/metrics") as resp:
            metrics = await resp.text()
    r.stop()
    assert problem is not None and "cannot save" in problem and "previous file is kept" in problem
    assert 'router_state_save_failures_total{file="state.json"} 1.0' in metrics
    assert "cannot save" in "".join(r.output)
