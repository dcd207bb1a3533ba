"""Test factories: free ports, the router as a real process, fake backends as real servers."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from aiohttp import web

from tests.forked import Process, start_router_process

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "test-token-123"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def base_config(tmp: Path, backends: dict[str, str], routes: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "listen": f"127.0.0.1:{free_port()}",
        "admin": {"listen": f"127.0.0.1:{free_port()}", "token_env": "ROUTER_ADMIN_TOKEN"},
        "state_dir": str(tmp / "state"),
        "limits": {"max_body": "64KiB", "connect_timeout": "1s", "request_timeout": "2s"},
        "backends": {name: {"url": url} for name, url in backends.items()},
        "routes": routes,
    }
    cfg.update(extra)
    return cfg


@dataclass
class RouterProcess:
    """The router started as in production: `python -m router serve --config FILE`."""

    config_path: Path
    config: dict[str, Any]
    proc: Process | None = None
    output: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://{self.config['listen']}"

    @property
    def host_port(self) -> tuple[str, int]:
        host, port = self.config["listen"].rsplit(":", 1)
        return host, int(port)

    @property
    def admin(self) -> str:
        return f"http://{self.config['admin']['listen']}"

    def write(self, config: dict[str, Any] | str) -> None:
        text = config if isinstance(config, str) else yaml.safe_dump(config, sort_keys=False)
        tmp = self.config_path.with_suffix(".tmp")
        tmp.write_text(text)
        os.replace(tmp, self.config_path)

    async def start(self, env: dict[str, str] | None = None) -> RouterProcess:
        self.write(self.config)
        full_env = {**os.environ, "ROUTER_ADMIN_TOKEN": TOKEN, **(env or {})}
        self.proc = start_router_process(
            ["serve", "--config", str(self.config_path), "--log-level", "warning"], full_env)
        await self.wait_ready()
        return self

    async def wait_ready(self, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession() as s:
            while time.monotonic() < deadline:
                assert self.proc is not None
                if self.proc.poll() is not None:
                    out = self.proc.stdout.read().decode() if self.proc.stdout else ""
                    raise RuntimeError(f"router exited with {self.proc.returncode}:\n{out}")
                with contextlib.suppress(aiohttp.ClientError):
                    async with s.get(self.admin + "/-/healthz") as r:
                        if r.status == 200:
                            return
                await asyncio.sleep(0.05)
        raise RuntimeError("router did not become ready")

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 20.0) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout:
            self.output.append(self.proc.stdout.read().decode())
            self.proc.stdout.close()
        code, self.proc = self.proc.wait(), None
        return code


RouterFactory = Callable[..., Awaitable[RouterProcess]]


async def eventually(check: Callable[[], Awaitable[Any] | Any], what: str, timeout: float = 10.0,
                     step: float = 0.05) -> Any:
    """Poll `check` (sync or async) until it returns something truthy; fail with `what` at the deadline.

    Returns the truthy value, so a test can wait for a report and then assert on its details.
    """
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        result = check()
        last = await result if asyncio.iscoroutine(result) else result
        if last:
            return last
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what} (last: {last!r})")
        await asyncio.sleep(step)


async def get_json(session: aiohttp.ClientSession, url: str) -> Any:
    async with session.get(url) as resp:
        return await resp.json()


@contextlib.asynccontextmanager
async def router_factory(tmp_path: Path) -> AsyncIterator[RouterFactory]:
    started: list[RouterProcess] = []

    async def make(config: dict[str, Any], *, env: dict[str, str] | None = None, name: str = "router") -> RouterProcess:
        rp = RouterProcess(tmp_path / f"{name}-{len(started)}.yaml", config)
        started.append(rp)
        return await rp.start(env)

    try:
        yield make
    finally:
        for rp in started:
            rp.stop()


@dataclass
class Backend:
    """A fake backend: a real aiohttp server that records what it receives."""

    name: str
    url: str = ""
    seen: list[dict[str, Any]] = field(default_factory=list)
    runner: web.AppRunner | None = None


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
BackendFactory = Callable[..., Awaitable[Backend]]


async def start_backend(name: str, handler: Handler | None = None, port: int | None = None) -> Backend:
    backend = Backend(name)

    async def default(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        return web.json_response({"backend": name, "path": request.path_qs, "body_len": len(body)})

    async def record(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        backend.seen.append({"method": request.method, "path": request.path_qs,
                             "headers": {k.lower(): v for k, v in request.headers.items()}, "body": body})
        return await (handler or default)(request)

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_route("*", "/{tail:.*}", record)
    backend.runner = web.AppRunner(app, access_log=None)
    await backend.runner.setup()
    port = port or free_port()
    await web.TCPSite(backend.runner, "127.0.0.1", port).start()
    backend.url = f"http://127.0.0.1:{port}"
    return backend


async def raw_request(host: str, port: int, data: bytes, *, read_timeout: float = 5.0) -> bytes:
    """Send raw bytes, read until the peer closes (or the timeout), return everything read."""
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(data)
    await writer.drain()
    chunks = []
    try:
        async with asyncio.timeout(read_timeout):
            while chunk := await reader.read(65536):
                chunks.append(chunk)
    except TimeoutError:
        pass
    finally:
        writer.close()
    return b"".join(chunks)
