"""The router as a real process on a "nearly full disk": `prlimit --fsize=N` caps every file it
writes at N bytes. A write that crosses the cap is cut short, the next one fails with EFBIG, as
on a full file system, without needing a small file system mounted (and Python ignores SIGXFSZ)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from tests.helpers import ROOT, TOKEN, RouterProcess

LimitedFactory = Callable[[dict[str, Any], int], Awaitable[RouterProcess]]


@contextlib.asynccontextmanager
async def limited_routers(tmp_path: Path) -> AsyncIterator[LimitedFactory]:
    """Start routers whose files are capped at `fsize` bytes; all are stopped afterwards."""
    started: list[RouterProcess] = []

    async def make(config: dict[str, Any], fsize: int) -> RouterProcess:
        rp = RouterProcess(tmp_path / f"limited-{len(started)}.yaml", config)
        started.append(rp)
        rp.write(config)
        command = ["prlimit", f"--fsize={fsize}", "--", sys.executable, "-m", "router", "serve",
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
