"""State edge cases: hand-edited split values that make no sense are ignored and reported; a state
directory the router cannot write stops it at start with a clear message, not a traceback."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from tests.helpers import ROOT, RouterFactory, base_config, free_port

YAML_PERCENT = 10.0
BAD_PERCENTS = [150, -1, math.nan, math.inf, "50", True, None, [50]]


def config(tmp_path: Path, **extra: Any) -> dict[str, Any]:
    backends = {"v1": f"http://127.0.0.1:{free_port()}", "v2": f"http://127.0.0.1:{free_port()}"}
    routes = [{"name": "m", "match": {"path_prefix": "/m"}, "primary": "v1", "candidate": "v2",
               "split": {"candidate_percent": YAML_PERCENT}}]
    return base_config(tmp_path, backends, routes, **extra)


def save_split(cfg: dict[str, Any], percent: Any) -> None:
    state_dir = Path(cfg["state_dir"])
    state_dir.mkdir(parents=True, exist_ok=True)
    # The base matches the YAML route, so only the value itself can disqualify the saved split.
    split = {"percent": percent, "base": ["v1", "v2", YAML_PERCENT]}
    (state_dir / "state.json").write_text(json.dumps({"splits": {"m": split}}))


async def route(admin: str) -> dict[str, Any]:
    async with aiohttp.ClientSession() as s, s.get(admin + "/-/routes/m") as resp:
        assert resp.status == 200
        return dict(await resp.json())


@pytest.mark.parametrize("percent", BAD_PERCENTS, ids=repr)
async def test_invalid_saved_split_is_ignored_for_the_yaml_value(
        make_router: RouterFactory, tmp_path: Path, percent: Any) -> None:
    cfg = config(tmp_path)
    save_split(cfg, percent)

    r = await make_router(cfg)

    assert (await route(r.admin))["candidate_percent"] == YAML_PERCENT


async def test_valid_saved_split_still_takes_effect(make_router: RouterFactory, tmp_path: Path) -> None:
    cfg = config(tmp_path)
    save_split(cfg, 42)

    r = await make_router(cfg)

    assert (await route(r.admin))["candidate_percent"] == 42.0


async def test_invalid_saved_split_is_reported(make_router: RouterFactory, tmp_path: Path) -> None:
    cfg = config(tmp_path)
    save_split(cfg, 150)

    r = await make_router(cfg)
    async with aiohttp.ClientSession() as s, s.get(r.admin + "/-/status") as resp:
        problem = (await resp.json())["state_problem"]
    r.stop()

    assert problem is not None and "'m'" in problem and "within 0..100" in problem
    assert "ignored invalid saved splits" in "".join(r.output)


def unwritable_dir(tmp_path: Path) -> Path:
    """A state_dir the router cannot create files in. Root ignores file modes; sysfs refuses it too."""
    if os.geteuid() == 0:
        return Path("/sys")
    path = tmp_path / "read-only"
    path.mkdir(mode=0o555)
    return path


def test_unwritable_state_dir_with_feedback_fails_cleanly(tmp_path: Path) -> None:
    cfg = config(tmp_path, monitoring={"feedback": {"retention": "1h"}})
    cfg["state_dir"] = str(unwritable_dir(tmp_path))
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(cfg))

    result = subprocess.run([sys.executable, "-m", "router", "serve", "--config", str(path)], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)

    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert "cannot start" in result.stderr and "feedback.sqlite3" in result.stderr and "writable" in result.stderr
