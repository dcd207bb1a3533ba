"""The `model-router` console script against a running router: status, actions, errors."""

from __future__ import annotations

import asyncio
import json
import random
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp

from tests.helpers import ROOT, TOKEN, RouterFactory, base_config, eventually, free_port, get_json

ModelFactory = Callable[..., Awaitable[str]]
SCRIPT = Path(sys.executable).parent / "model-router"  # installed by `pip install -e .`


async def cli(*args: str, token: str | None = TOKEN) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", **({"ROUTER_ADMIN_TOKEN": token} if token else {})}
    return await asyncio.to_thread(subprocess.run, [str(SCRIPT), *args], cwd=ROOT, env=env, capture_output=True,
                                   text=True, timeout=60)


async def test_cli_against_a_running_router(make_router: RouterFactory, make_model: ModelFactory,
                                            tmp_path: Path) -> None:
    v1, v2 = await make_model(version="v1"), await make_model(version="v2", perturb=0.5, seed=2)
    routes = [
        {"name": "fraud", "match": {"path_prefix": "/v1/models/fraud"}, "primary": "v1", "candidate": "v2",
         "shadow": {"backend": "v2", "compare": {"format": "kserve-v1"}},
         "rollout": {"steps": [0, 50, 100], "interval": "1h", "min_samples": 100000}},
        {"name": "plain", "match": {"path_prefix": "/v1/models/plain"}, "primary": "v1", "candidate": "v2"},
    ]
    r = await make_router(base_config(tmp_path, {"v1": v1, "v2": v2}, routes))
    admin = r.config["admin"]["listen"]
    rng = random.Random(1)
    async with aiohttp.ClientSession() as s:
        for _ in range(30):
            body = {"instances": [[rng.gauss(0, 1) for _ in range(4)]]}
            async with s.post(r.url + "/v1/models/fraud:predict", json=body) as resp:
                assert resp.status == 200
        await eventually(lambda: _compared(s, r.admin, 30), "30 shadow comparisons")

    status = await cli("status", "--admin", admin)
    assert status.returncode == 0, status.stderr
    lines = status.stdout.splitlines()
    assert lines[0].split()[:3] == ["ROUTE", "PHASE", "SPLIT"]
    fraud = next(line for line in lines if line.startswith("fraud"))
    assert "shadowing 1/3" in fraud and "v1 100% / v2 0%" in fraud and "%" in fraud.split("v2 0%")[1]
    as_json = json.loads((await cli("status", "--json", "--admin", admin)).stdout)
    assert as_json["shadow"]["fraud"]["compared"] == 30

    diffs = await cli("diffs", "fraud", "--limit", "2", "--admin", admin)
    assert diffs.returncode == 0 and diffs.stdout.count("fields:") == 2

    split = await cli("split", "plain", "30", "--admin", admin)
    assert split.returncode == 0 and "candidate_percent 30" in split.stdout
    refused = await cli("split", "fraud", "30", "--admin", admin)
    assert refused.returncode == 1 and "409" in refused.stderr and "automatic rollout" in refused.stderr

    promote = await cli("promote", "fraud", "--admin", admin)
    assert promote.returncode == 0 and "progressing (step 1)" in promote.stdout
    pause = await cli("pause", "fraud", "--admin", admin)
    assert pause.returncode == 0 and "paused" in pause.stdout
    again = await cli("pause", "fraud", "--admin", admin)
    assert again.returncode == 1 and "cannot pause a rollout that is paused" in again.stderr
    assert (await cli("resume", "fraud", "--admin", admin)).returncode == 0
    assert (await cli("rollback", "fraud", "--admin", admin)).returncode == 0

    reload = await cli("reload", "--admin", admin)
    assert reload.returncode == 0 and "reloaded" in reload.stdout

    unknown = await cli("promote", "nope", "--admin", admin)
    assert unknown.returncode == 1 and "404: unknown route 'nope'" in unknown.stderr
    bad_token = await cli("promote", "fraud", "--admin", admin, "--token", "wrong")
    assert bad_token.returncode == 1 and "401" in bad_token.stderr
    no_token = await cli("pause", "fraud", "--admin", admin, token=None)
    assert no_token.returncode == 1 and "no admin token" in no_token.stderr
    down = await cli("status", "--admin", f"127.0.0.1:{free_port()}")
    assert down.returncode == 1 and "cannot reach the router's admin API" in down.stderr


async def _compared(s: aiohttp.ClientSession, admin: str, n: int) -> bool:
    return bool((await get_json(s, f"{admin}/-/routes/fraud/shadow"))["compared"] >= n)
