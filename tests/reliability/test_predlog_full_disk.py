"""The prediction log on a full disk: no torn JSON line, and only the records that did not reach the
file are counted as write errors."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from tests.helpers import BackendFactory, RouterProcess, base_config
from tests.reliability.rlimits import LimitedFactory, limited_routers

FSIZE = 9_000  # bytes per file: a few dozen records fit
REQUESTS = 150


@pytest.fixture
async def make_limited(tmp_path: Path) -> AsyncIterator[LimitedFactory]:
    async with limited_routers(tmp_path) as make:
        yield make


def counters(text: str) -> dict[str, float]:
    return {m[1]: float(m[2]) for m in re.finditer(r'^router_prediction_log_records_total\{result="(\w+)"\} (\S+)$',
                                                   text, re.MULTILINE)}


async def log_until_full(r: RouterProcess) -> dict[str, float]:
    """Send REQUESTS requests, then wait until the log has accounted for every one."""
    async with aiohttp.ClientSession() as s:
        async def send(n: int) -> None:
            for _ in range(n):
                async with s.post(r.url + "/m", data=b"{}") as resp:
                    assert resp.status == 200

        await asyncio.gather(*(send(REQUESTS // 10) for _ in range(10)))
        deadline = time.monotonic() + 15
        while True:
            async with s.get(r.admin + "/metrics") as resp:
                seen = counters(await resp.text())
            if seen.get("written", 0) + seen.get("write_errors", 0) >= REQUESTS:
                return seen
            if time.monotonic() > deadline:
                raise AssertionError(f"the prediction log accounted for fewer than {REQUESTS} records: {seen}")
            await asyncio.sleep(0.05)


async def start(make_limited: LimitedFactory, make_backend: BackendFactory, tmp_path: Path) -> tuple[RouterProcess,
                                                                                                       Path]:
    backend = await make_backend("v1")
    path = tmp_path / "predictions.jsonl"
    route = {"name": "m", "match": {"path_prefix": "/m"}, "primary": "v1"}
    cfg = base_config(tmp_path, {"v1": backend.url}, [route], monitoring={"prediction_log": {"path": str(path)}})
    return await make_limited(cfg, f"--fsize={FSIZE}"), path


async def test_full_disk_never_tears_a_prediction_log_line(
        make_limited: LimitedFactory, make_backend: BackendFactory, tmp_path: Path) -> None:
    r, path = await start(make_limited, make_backend, tmp_path)

    seen = await log_until_full(r)

    text = path.read_bytes()
    assert seen.get("write_errors", 0) > 0, "the file size cap was never reached"
    assert text.endswith(b"\n"), f"torn last line: {text[-120:]!r}"
    for line in text.splitlines():
        json.loads(line)


async def test_full_disk_counts_only_records_that_failed(
        make_limited: LimitedFactory, make_backend: BackendFactory, tmp_path: Path) -> None:
    r, path = await start(make_limited, make_backend, tmp_path)

    seen = await log_until_full(r)

    complete = path.read_bytes().count(b"\n")
    assert seen.get("write_errors", 0) > 0, "the file size cap was never reached"
    assert (seen["written"], seen["write_errors"]) == (complete, REQUESTS - complete)
