"""Backends that hang in the handshake, send stray bytes, endless heads or unusual framing: the
pool keeps its slots, a waiting request gets a sound connection, and every answer is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp

from tests.helpers import BackendFactory, RouterFactory, base_config
from tests.reliability.netkit import Address, get, request_once

Conversation = Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[None]]


@contextlib.asynccontextmanager
async def raw_backend(conversation: Conversation) -> AsyncIterator[str]:
    """A backend that runs `conversation(reader, writer, n)` on its n-th connection; yields its URL."""
    count = 0
    tasks: set[asyncio.Task[None]] = set()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal count
        count += 1
        tasks.add(asyncio.current_task())  # type: ignore[arg-type]
        try:
            await conversation(reader, writer, count)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        server.close()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            await reader.readexactly(int(line.split(b":", 1)[1]))
    return head


def one_route(tmp_path: Path, url: str, **route: Any) -> dict[str, Any]:
    cfg = base_config(tmp_path, {"b": url}, [{"name": "m", "match": {"path_prefix": "/"}, "primary": "b", **route}])
    cfg["limits"]["drain_timeout"] = "1s"
    return cfg


async def call(addr: Address, path: str = "/", timeout: float = 10.0) -> Any:
    return await asyncio.to_thread(request_once, addr, get(addr, path), timeout)


def hanging_listener() -> tuple[socket.socket, list[socket.socket]]:
    """A port whose TCP handshakes hang: a listener that never accepts, its queue filled."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    fillers: list[socket.socket] = []
    while True:
        s = socket.socket()
        s.settimeout(0.3)
        try:
            s.connect(listener.getsockname())
        except TimeoutError:
            s.close()
            return listener, fillers
        fillers.append(s)
        assert len(fillers) < 64, "the listen queue never filled"


async def test_cancelled_connects_give_their_pool_slots_back(
        make_router: RouterFactory, make_backend: BackendFactory, tmp_path: Path) -> None:
    listener, fillers = hanging_listener()
    port = listener.getsockname()[1]
    cfg = one_route(tmp_path, f"http://127.0.0.1:{port}", timeout="300ms", retries=0)
    cfg["backends"]["b"].update({"max_connections": 2})
    cfg["limits"]["connect_timeout"] = "10s"
    try:
        r = await make_router(cfg)
        for _ in range(3):  # more than max_connections connects, each cut by the route's timeout
            assert (await call(r.host_port)).status == 504
    finally:
        for s in fillers:
            s.close()
        listener.close()
    await make_backend("b", port=port)  # the backend is healthy again, on the same port

    deadline = time.monotonic() + 10
    statuses = []
    while time.monotonic() < deadline:
        statuses.append((await call(r.host_port)).status)
        if statuses[-1] == 200:
            break
        await asyncio.sleep(0.1)
    assert statuses[-1] == 200, f"the pool never recovered its slots: statuses {statuses}"


async def test_connection_with_stray_bytes_is_not_handed_to_a_waiting_request(
        make_router: RouterFactory, tmp_path: Path) -> None:
    body = '{"label": "é"}'.encode()
    miscounted = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body) - 1, body)  # characters, not bytes
    ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"

    async def conversation(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        while True:
            await read_request(reader)
            if n == 1:
                await asyncio.sleep(0.5)  # the other request is now waiting for this pool's one connection
                writer.write(miscounted)
            else:
                writer.write(ok)
            await writer.drain()

    async with raw_backend(conversation) as url:
        cfg = one_route(tmp_path, url, timeout="5s")
        cfg["backends"]["b"].update({"max_connections": 1})
        r = await make_router(cfg)
        first, second = await asyncio.gather(call(r.host_port, "/1"), call(r.host_port, "/2"))
        stopped = r.stop()
        output = "".join(r.output)
    assert (first.status, second.status) == (200, 200), (first.raw[:200], second.raw[:200])
    assert stopped == 0
    assert "never retrieved" not in output, output


async def test_endless_response_head_gets_502(make_router: RouterFactory, tmp_path: Path) -> None:
    async def conversation(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nX-Endless: ")
        for _ in range(64):  # 64 MiB, far past any head limit
            writer.write(b"a" * (1 << 20))
            await writer.drain()

    async with raw_backend(conversation) as url:
        cfg = one_route(tmp_path, url, timeout="20s")
        cfg["limits"]["max_response_header_size"] = "32KiB"
        r = await make_router(cfg)
        resp = await call(r.host_port, timeout=20)
        async with aiohttp.ClientSession() as s, s.get(r.admin + "/metrics") as m:
            metrics = await m.text()
    assert resp.status == 502, resp.raw[:300]
    assert "larger than" in resp.json()["error"]["message"]
    assert 'router_upstream_errors_total{backend="b",kind="head_too_large"} 1.0' in metrics


async def test_close_delimited_response_with_transfer_encoding_identity_is_delivered(
        make_router: RouterFactory, tmp_path: Path) -> None:
    async def conversation(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: identity\r\nConnection: close\r\n\r\nhello, ")
        await writer.drain()
        writer.write(b"world")
        await writer.drain()

    async with raw_backend(conversation) as url:
        r = await make_router(one_route(tmp_path, url))
        async with aiohttp.ClientSession() as s, s.get(r.url + "/x") as resp:
            body = await resp.read()
            status = resp.status
        async with aiohttp.ClientSession() as s, s.get(r.admin + "/metrics") as m:
            metrics = await m.text()
    assert (status, body) == (200, b"hello, world")
    assert "closed_mid_body" not in metrics
