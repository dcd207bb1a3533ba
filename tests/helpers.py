"""Test factories: free ports, the router as a real process, fake backends as real servers."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import random
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


def _port_block() -> range | None:
    """This pytest process's own ports: below the kernel's ephemeral range, split between xdist workers.

    A port from bind(0) is in the ephemeral range, so between free_port() and the router's own bind
    another test's outgoing connection, or another xdist worker's free_port(), can take it (seen: a
    router's admin port answered by another worker's router). Ports below that range are only ever
    handed out here, and each worker hands out its own. None (use bind(0)) if the range is unusual."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    start = 30000  # above the demo tests' moved ports (at most 29901)
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    index = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0")[2:] or 0)
    size = (low - start) // max(workers, 1)
    if size < 200:
        return None
    return range(start + index * size, start + (index + 1) * size)


_BLOCK = _port_block()
_next_ports = itertools.cycle(random.sample(list(_BLOCK), len(_BLOCK))) if _BLOCK else None


def free_port() -> int:
    """A port free now and not handed out again before this process has gone through its block."""
    for _ in range(len(_BLOCK) if _BLOCK else 0):
        assert _next_ports is not None
        port = next(_next_ports)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
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
        """Wait for the ready line, which `serve` prints once the data listener is bound and the signal
        handlers are in place. (`/-/healthz` answers earlier, while the data listener may still be
        starting: a test that connected then was refused.) What is read here stays in the output."""
        assert self.proc is not None and self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        early = bytearray()
        loop = asyncio.get_running_loop()
        readable = asyncio.Event()  # woken by the output itself, not by polling
        os.set_blocking(fd, False)
        loop.add_reader(fd, readable.set)
        try:
            deadline = time.monotonic() + timeout
            while b"model-router listening on " not in early:
                readable.clear()  # before reading: output arriving after the read sets it again
                with contextlib.suppress(BlockingIOError):
                    while chunk := os.read(fd, 65536):
                        early += chunk
                    if self.proc.wait(1) is not None:  # EOF: the router has exited
                        raise RuntimeError(f"router exited with {self.proc.returncode}:\n{early.decode()}")
                if b"model-router listening on " in early:
                    break
                try:
                    await asyncio.wait_for(readable.wait(), max(deadline - time.monotonic(), 0.0))
                except TimeoutError:
                    raise RuntimeError(f"router did not become ready:\n{early.decode()}") from None
        finally:
            loop.remove_reader(fd)
            os.set_blocking(fd, True)
            self.output.append(early.decode(errors="replace"))

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
    # A handler still running at teardown (a deliberately slow backend) is cancelled after 0.5 s
    # instead of aiohttp's default 60 s wait: the test has made its assertions by then.
    backend.runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
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
