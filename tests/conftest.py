from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.helpers import Backend, BackendFactory, Handler, RouterFactory, router_factory, start_backend


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
