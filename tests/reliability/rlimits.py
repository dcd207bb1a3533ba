"""The router as a real process under resource limits set by `prlimit` (util-linux).

`--fsize=N` makes a "nearly full disk": every file the router writes is capped at N bytes; a write
that crosses the cap is cut short and the next one fails with EFBIG, as on a full file system,
without a small file system to mount (Python ignores SIGXFSZ). `--nofile=SOFT:HARD` sets the
open-files limits the router starts with."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from tests.helpers import ROOT, TOKEN, RouterProcess

LimitedFactory = Callable[..., Awaitable[RouterProcess]]


@contextlib.asynccontextmanager
async def limited_routers(tmp_path: Path) -> AsyncIterator[LimitedFactory]:
    """Start routers under `prlimit` options (e.g. "--fsize=2048"); all are stopped afterwards."""
    started: list[RouterProcess] = []

    async def make(config: dict[str, Any], *limits: str) -> RouterProcess:
        rp = RouterProcess(tmp_path / f"limited-{len(started)}.yaml", config)
        started.append(rp)
        rp.write(config)
        command = ["prlimit", *limits, "--", sys.executable, "-m", "router", "serve",
                   "--config", str(rp.config_path), "--log-level", "warning"]
        rp.proc = subprocess.Popen(command, cwd=ROOT, env={**os.environ, "ROUTER_ADMIN_TOKEN": TOKEN},
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        await rp.wait_ready()
        return rp

    try:
        yield make
    finally:
        for rp in started:
            rp.stop()
