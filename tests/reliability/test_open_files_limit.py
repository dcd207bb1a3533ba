"""At start the router raises its soft open-files limit towards the hard one, as far as its config
needs, and warns when even that is too low for limits.max_connections."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from router.dataplane.openfiles import HEADROOM
from tests.helpers import RouterProcess, base_config, free_port
from tests.reliability.rlimits import LimitedFactory, limited_routers

MAX_CONNECTIONS = 1000
WANTED = MAX_CONNECTIONS + 2 * 256 + HEADROOM  # two single-endpoint backends with the default pool


@pytest.fixture
async def make_limited(tmp_path: Path) -> AsyncIterator[LimitedFactory]:
    async with limited_routers(tmp_path) as make:
        yield make


def config(tmp_path: Path) -> dict[str, Any]:
    backends = {"v1": f"http://127.0.0.1:{free_port()}", "v2": f"http://127.0.0.1:{free_port()}"}
    cfg = base_config(tmp_path, backends, [{"name": "m", "match": {"path_prefix": "/"}, "primary": "v1"}])
    cfg["limits"]["max_connections"] = MAX_CONNECTIONS
    return cfg


def soft_open_files(r: RouterProcess) -> int:
    assert r.proc is not None
    for line in Path(f"/proc/{r.proc.pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            return int(line.split()[3])
    raise AssertionError("no 'Max open files' in /proc/PID/limits")


async def test_soft_limit_is_raised_to_what_the_config_needs(make_limited: LimitedFactory, tmp_path: Path) -> None:
    r = await make_limited(config(tmp_path), "--nofile=256:8192")

    assert soft_open_files(r) == WANTED


async def test_soft_limit_is_raised_at_most_to_the_hard_limit(make_limited: LimitedFactory, tmp_path: Path) -> None:
    r = await make_limited(config(tmp_path), "--nofile=256:1200")

    assert soft_open_files(r) == 1200


async def test_too_low_a_hard_limit_is_reported_at_start(make_limited: LimitedFactory, tmp_path: Path) -> None:
    r = await make_limited(config(tmp_path), "--nofile=256:1200")
    r.stop()

    output = "".join(r.output)
    assert "open-files limit is 1200" in output and "limits.max_connections (1000)" in output, output


async def test_a_sufficient_limit_is_not_reported(make_limited: LimitedFactory, tmp_path: Path) -> None:
    r = await make_limited(config(tmp_path), "--nofile=256:8192")
    r.stop()

    assert "open-files limit" not in "".join(r.output)
