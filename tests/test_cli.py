"""The `model-router` console script against a running router: status, actions, errors."""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp

from router import __version__
from router.cli import build_parser
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
         # max_concurrency: pacing never drops a copy, so all 30 requests are compared
         "shadow": {"backend": "v2", "max_concurrency": 100_000, "compare": {"format": "kserve-v1"}},
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

        async def compared() -> bool:
            return bool((await get_json(s, r.admin + "/-/routes/fraud/shadow"))["compared"] == 30)

        await eventually(compared, "30 comparisons")

    status = await cli("status", "--admin", admin)
    assert status.returncode == 0, status.stderr
    lines = status.stdout.splitlines()
    assert lines[0].split()[:3] == ["ROUTE", "PHASE", "SPLIT"]
    fraud = next(line for line in lines if line.startswith("fraud"))
    assert "shadowing step 1 of 3 (0%)" in fraud and "v1 100% / v2 0%" in fraud and "%" in fraud.split("v2 0%")[1]
    as_json = json.loads((await cli("status", "--json", "--admin", admin)).stdout)
    assert as_json["shadow"]["fraud"]["compared"] == 30

    diffs = await cli("diffs", "fraud", "--limit", "2", "--admin", admin)
    assert diffs.returncode == 0 and diffs.stdout.count("fields:") == 2
    as_json = json.loads((await cli("diffs", "fraud", "--limit", "1", "--json", "--admin", admin)).stdout)
    assert isinstance(as_json["diffs"][0]["live"], dict) and "predictions" in as_json["diffs"][0]["shadow"]
    zero = await cli("diffs", "fraud", "--limit", "0", "--admin", admin)
    assert zero.returncode == 2 and "must be 1 or more" in zero.stderr

    split = await cli("split", "plain", "30", "--admin", admin)
    assert split.returncode == 0 and "candidate_percent 30" in split.stdout
    refused = await cli("split", "fraud", "30", "--admin", admin)
    assert refused.returncode == 1 and "409" in refused.stderr and "automatic rollout" in refused.stderr

    promote = await cli("promote", "fraud", "--admin", admin)
    assert promote.returncode == 0 and "progressing, step 2 of 3 (50%)" in promote.stdout
    pause = await cli("pause", "fraud", "--admin", admin)
    assert pause.returncode == 0 and "paused" in pause.stdout
    again = await cli("pause", "fraud", "--admin", admin)
    assert again.returncode == 1 and "cannot pause a rollout that is paused" in again.stderr
    assert (await cli("resume", "fraud", "--admin", admin)).returncode == 0
    back = await cli("rollback", "fraud", "--reason", "bad labels", "--actor", "bob", "--admin", admin)
    assert back.returncode == 0 and "rolled back by bob" in back.stdout and "bad labels" in back.stdout
    promote = await cli("promote", "fraud", "--admin", admin)
    assert promote.returncode == 1 and "try `model-router restart fraud`" in promote.stderr
    split = await cli("split", "fraud", "0", "--admin", admin)
    assert split.returncode == 1 and "model-router restart fraud" in split.stderr

    reload = await cli("reload", "--admin", admin)
    assert reload.returncode == 0 and "reloaded" in reload.stdout
    good = r.config_path.read_text()
    r.config_path.write_text(good.replace("primary: v1", "primary: zzz", 1))
    broken = await cli("reload", "--admin", admin)
    assert broken.returncode == 1 and "routes[0].primary: unknown backend 'zzz'" in broken.stderr
    assert f"{r.config_path}:" in broken.stderr
    r.config_path.write_text(good)

    unknown = await cli("promote", "nope", "--admin", admin)
    assert unknown.returncode == 1 and "404: unknown route 'nope'" in unknown.stderr
    bad_token = await cli("promote", "fraud", "--admin", admin, "--token", "wrong")
    assert bad_token.returncode == 1 and "401" in bad_token.stderr
    no_token = await cli("pause", "fraud", "--admin", admin, token=None)
    assert no_token.returncode == 1 and "no admin token" in no_token.stderr
    down = await cli("status", "--admin", f"127.0.0.1:{free_port()}")
    assert down.returncode == 1 and "cannot reach the router's admin API" in down.stderr


async def test_version_and_every_subcommand_describes_its_arguments() -> None:
    version = await cli("--version")
    assert version.returncode == 0 and version.stdout.strip() == f"model-router {__version__}"
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert {"finalize", "rollback", "diffs", "validate"} <= set(sub.choices)
    for command, parser in sub.choices.items():
        assert parser.description, f"{command} --help has no description"
        for action in parser._actions:
            assert action.help, f"{command}: {action.dest} has no help text"
    rollback = await cli("rollback", "--help")
    assert rollback.returncode == 0 and "--reason" in rollback.stdout and "route name" in rollback.stdout


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "r.yaml"
    path.write_text(text)
    return path


async def test_validate_warns_and_explains_tabs_and_indentation(tmp_path: Path) -> None:
    head = "listen: 127.0.0.1:8080\nbackends:\n  a: {url: 'http://127.0.0.1:1'}\n  b: {url: 'http://127.0.0.1:2'}\n"
    path = write(tmp_path, head + "routes:\n  - name: r\n    match: {path_prefix: /}\n    primary: a\n"
                 "    candidate: b\n    split: {candidate_percent: 20}\n    rollout: {steps: [0, 100]}\n")
    warned = await cli("validate", str(path), token=None)
    assert warned.returncode == 0, warned.stderr
    assert "routes[0].split.candidate_percent: 20 is overridden by the rollout of route 'r', which starts at " \
           "step 1 of 2 (0%)" in warned.stderr
    assert "$ROUTER_ADMIN_TOKEN is not set in this environment" in warned.stderr
    quiet = await cli("validate", str(path))
    assert "ROUTER_ADMIN_TOKEN" not in quiet.stderr

    tab = await cli("validate", str(write(tmp_path, head + "routes:\n\t- name: r\n")))
    assert tab.returncode == 2 and "r.yaml:6: <top>: YAML syntax: a tab character at column 1" in tab.stderr
    indent = await cli("validate", str(write(tmp_path, head.replace("  b:", "   b:") + "routes: []\n")))
    assert indent.returncode == 2
    assert "line 4 is indented by 3 spaces, which lines up with no block above it: did you mean 2" in indent.stderr
    empty = await cli("validate", str(write(tmp_path, head + "routes:\n  - name: r\n    match: {path_prefix: /}\n"
                                            "    primary: a\n    split:\n    candidate_percent: 3\n")))
    assert "routes[0].split: expected a mapping, got null (nothing is indented under it" in empty.stderr


async def test_serve_warns_without_an_admin_token(make_router: RouterFactory, tmp_path: Path) -> None:
    routes = [{"name": "m", "match": {"path_prefix": "/"}, "primary": "a"}]
    r = await make_router(base_config(tmp_path, {"a": f"http://127.0.0.1:{free_port()}"}, routes),
                          env={"ROUTER_ADMIN_TOKEN": ""})
    r.stop()
    assert "no admin token set ($ROUTER_ADMIN_TOKEN is empty)" in "".join(r.output)


async def test_finalize_refuses_a_route_that_is_not_promoted(make_router: RouterFactory, make_model: ModelFactory,
                                                             tmp_path: Path) -> None:
    v1, v2 = await make_model(version="v1"), await make_model(version="v2")
    routes = [{"name": "fraud", "match": {"path_prefix": "/"}, "primary": "v1", "candidate": "v2",
               "rollout": {"steps": [0, 100], "interval": "1h", "min_samples": 100000}}]
    r = await make_router(base_config(tmp_path, {"v1": v1, "v2": v2}, routes))
    before = r.config_path.read_text()
    args = ("finalize", "fraud", "--config", str(r.config_path), "--admin", r.config["admin"]["listen"])
    refused = await cli(*args, "--write")
    assert refused.returncode == 1 and "is shadowing, not promoted" in refused.stderr
    assert r.config_path.read_text() == before
    unknown = await cli("finalize", "nope", "--config", str(r.config_path))
    assert unknown.returncode == 2 and "no route named 'nope'" in unknown.stderr
    forced = await cli(*args, "--write", "--force")
    assert forced.returncode == 0 and "primary: v2" in r.config_path.read_text()
