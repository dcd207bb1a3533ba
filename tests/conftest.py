from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from backends.model_server import ServerOptions, build_app
from tests.helpers import (
    Backend,
    BackendFactory,
    Handler,
    RouterFactory,
    free_port,
    router_factory,
    start_backend,
)
from tests.redis_server import RedisServer, redis_server

# A fake's handler still running when its test ends (a deliberately slow backend) is cancelled after
# this long, instead of aiohttp's default 60 s wait: the test has made its assertions by then.
TEARDOWN_S = 0.5


@pytest.fixture
async def make_router(tmp_path: Path) -> AsyncIterator[RouterFactory]:
    async with router_factory(tmp_path) as make:
        yield make


@pytest.fixture
async def make_backend() -> AsyncIterator[BackendFactory]:
    """Start fake backends (real aiohttp servers); all are stopped after the test."""
    started: list[Backend] = []

    async def make(name: str, handler: Handler | None = None, port: int | None = None) -> Backend:
        backend = await start_backend(name, handler, port)
        started.append(backend)
        return backend

    yield make
    for backend in started:
        assert backend.runner is not None
        await backend.runner.cleanup()


@pytest.fixture
async def make_model() -> AsyncIterator[Callable[..., Awaitable[str]]]:
    """Start example model servers (backends.model_server) in-process; returns their URLs."""
    runners: list[web.AppRunner] = []

    async def make(**options: Any) -> str:
        port = free_port()
        app = build_app(ServerOptions(port=port, **options))
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=TEARDOWN_S)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        runners.append(runner)
        return f"http://127.0.0.1:{port}"

    yield make
    for runner in runners:
        await runner.cleanup()


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A real redis-server on a free port, stopped after the test."""
    with redis_server(tmp_path / "redis") as server:
        yield server
