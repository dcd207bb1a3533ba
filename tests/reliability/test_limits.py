"""Limits and deadlines: oversized or slow requests are cut off, and cannot starve other clients.

Each size limit is tested twice: with the request in one write, and with one byte per write, so a
check that only looks at what one read returned cannot be slipped past.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.helpers import BackendFactory, RouterFactory, base_config
from tests.reliability.netkit import (
    Address,
    H11Backend,
    connect,
    fd_count,
    get,
    parse_response,
    read_response,
    read_until_close,
    request_once,
    router_with_h11_backend,
    send_and_read,
    trickle_and_read,
    wait_until,
)

MAX_HEADER_SIZE = 2048
MAX_HEADERS = 20
MAX_BODY = 1024
ROUTES = [{"name": "all", "match": {"path_prefix": "/"}, "primary": "b"}]
H = b"Host: model.example\r\n"


@pytest.fixture(scope="module")
def sized(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Address, H11Backend, int]]:
    """A router with small size limits: (address, backend, router pid)."""
    tmp: Path = tmp_path_factory.mktemp("sized")
    limits = {"max_header_size": f"{MAX_HEADER_SIZE}B", "max_headers": MAX_HEADERS, "max_body": f"{MAX_BODY}B"}
    with router_with_h11_backend(tmp, ROUTES, limits) as (rp, backend):
        assert rp.proc is not None
        yield rp.host_port, backend, rp.proc.pid


@pytest.fixture(scope="module")
def timed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Address]:
    """A router with one-second header and idle deadlines."""
    tmp: Path = tmp_path_factory.mktemp("timed")
    with router_with_h11_backend(tmp, ROUTES, {"header_timeout": "1s", "idle_timeout": "1s"}) as (rp, _):
        yield rp.host_port


_sentinels = itertools.count()


def assert_refused(addr: Address, backend: H11Backend, before: int, answer: tuple[bytes, bool], status: int) -> None:
    """`status` with a JSON body, the connection closed, and nothing but a sentinel at the backend."""
    data, closed = answer
    resp = parse_response(data)
    assert resp.status_line.startswith(b"HTTP/1.1 %d " % status), data[:300]
    assert resp.json()["error"]["status"] == status
    assert closed, "the router kept the connection open"
    path = f"/sentinel/{next(_sentinels)}"
    assert request_once(addr, get(addr, path)).status == 200
    seen = backend.snapshot()[before:]
    assert [s.target for s in seen] == [path.encode()], f"the backend received {[s.raw[:300] for s in seen]!r}"


def big_head() -> bytes:
    return b"GET /limited HTTP/1.1\r\n" + H + b"X-Big: " + b"a" * (MAX_HEADER_SIZE + 200) + b"\r\n\r\n"


def many_headers() -> bytes:
    lines = b"".join(b"X-H%d: v\r\n" % i for i in range(MAX_HEADERS + 10))
    return b"GET /limited HTTP/1.1\r\n" + H + lines + b"\r\n"


def long_content_length() -> bytes:
    return b"POST /limited HTTP/1.1\r\n" + H + b"Content-Length: %d\r\n\r\n" % (MAX_BODY * 2) + b"x" * (MAX_BODY * 2)


def long_chunked() -> bytes:
    n = MAX_BODY * 2
    return (b"POST /limited HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n%x\r\n" % n
            + b"x" * n + b"\r\n0\r\n\r\n")


def test_head_over_max_header_size_in_one_write_gets_431(sized: tuple[Address, H11Backend, int]) -> None:
    addr, backend, _ = sized
    before = len(backend.snapshot())
    assert_refused(addr, backend, before, send_and_read(addr, big_head()), 431)


def test_head_over_max_header_size_byte_by_byte_gets_431(sized: tuple[Address, H11Backend, int]) -> None:
    addr, backend, _ = sized
    before = len(backend.snapshot())
    assert_refused(addr, backend, before, trickle_and_read(addr, big_head()), 431)


LONG_TARGETS = {
    "http-1.1": b"GET /limited/" + b"a" * (MAX_HEADER_SIZE + 200) + b" HTTP/1.1\r\n" + H + b"\r\n",
    "http-1.0-no-headers": b"GET /limited/" + b"a" * (MAX_HEADER_SIZE + 200) + b" HTTP/1.0\r\n\r\n",
}


@pytest.mark.parametrize("raw", LONG_TARGETS.values(), ids=LONG_TARGETS.keys())
def test_request_target_over_max_header_size_in_one_write_is_refused(
        sized: tuple[Address, H11Backend, int], raw: bytes) -> None:
    addr, backend, _ = sized
    before = len(backend.snapshot())
    data, closed = send_and_read(addr, raw)
    status = parse_response(data).status
    assert status in (414, 431), data[:300]
    assert_refused(addr, backend, before, (data, closed), status)


def test_too_many_headers_in_one_write_gets_431(sized: tuple[Address, H11Backend, int]) -> None:
    addr, backend, _ = sized
    before = len(backend.snapshot())
    assert_refused(addr, backend, before, send_and_read(addr, many_headers()), 431)


def test_too_many_headers_byte_by_byte_gets_431(sized: tuple[Address, H11Backend, int]) -> None:
    addr, backend, _ = sized
    before = len(backend.snapshot())
    assert_refused(addr, backend, before, trickle_and_read(addr, many_headers()), 431)


def test_content_length_over_max_body_in_one_write_gets_413(sized: tuple[Address, H11Backend, int]) -> None:
    addr, backend, _ = sized
    before = len(backend.snapshot())
    assert_refused(addr, backend, before, send_and_read(addr, long_content_length()), 413)


def test_content_length_over_max_body_byte_by_byte_gets_413(sized: tuple[Address, H11Backend, int]) -> None:
    addr, backend, _ = sized
    before = len(backend.snapshot())
    assert_refused(addr, backend, before, trickle_and_read(addr, long_content_length()), 413)


def test_chunked_body_over_max_body_in_one_write_gets_413(sized: tuple[Address, H11Backend, int]) -> None:
    addr, backend, _ = sized
    before = len(backend.snapshot())
    assert_refused(addr, backend, before, send_and_read(addr, long_chunked()), 413)


def test_chunked_body_over_max_body_byte_by_byte_gets_413(sized: tuple[Address, H11Backend, int]) -> None:
    addr, backend, _ = sized
    before = len(backend.snapshot())
    assert_refused(addr, backend, before, trickle_and_read(addr, long_chunked()), 413)


def test_idle_keep_alive_connection_is_closed_after_idle_timeout(timed: Address) -> None:
    with connect(timed) as sock:
        sock.sendall(get(timed, "/first"))
        assert read_response(sock).status == 200
        rest, closed = read_until_close(sock, timeout=6.0)
    assert closed, "an idle keep-alive connection was still open 6s after a 1s idle_timeout"
    assert rest == b"", f"unexpected bytes on an idle connection: {rest[:200]!r}"


async def test_slowloris_head_gets_408_while_others_are_served(timed: Address) -> None:
    partial = b"GET /slow HTTP/1.1\r\n" + H + b"X-Slow: " + b"a" * 60  # never finished
    slow = asyncio.create_task(asyncio.to_thread(trickle_and_read, timed, partial, 0.1, 6.0))
    await asyncio.sleep(0.2)  # the slow client has begun its head

    normal = await asyncio.to_thread(request_once, timed, get(timed, "/normal"))

    data, closed = await slow
    assert normal.status == 200
    assert closed, "a client trickling its head was not cut off (header_timeout 1s)"
    assert data == b"" or data.startswith(b"HTTP/1.1 408 "), data[:200]


async def test_many_slow_clients_do_not_starve_normal_clients(
        make_router: RouterFactory, make_backend: BackendFactory, tmp_path: Path) -> None:
    b = await make_backend("b")
    cfg = base_config(tmp_path, {"b": b.url}, ROUTES)
    cfg["limits"].update({"header_timeout": "30s"})
    r = await make_router(cfg)
    host, port = r.host_port
    slow = [await asyncio.open_connection(host, port) for _ in range(200)]
    head = b"GET /slow HTTP/1.1\r\nX-Slow: " + b"a" * 1000

    async def tick() -> None:
        for i in range(len(head)):
            for _, w in slow:
                w.write(head[i:i + 1])
            await asyncio.sleep(0.5)

    ticker = asyncio.create_task(tick())
    try:
        await asyncio.sleep(0.1)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as s:
            async def one(i: int) -> int:
                async with s.get(f"{r.url}/normal/{i}") as resp:
                    await resp.read()
                    return resp.status
            statuses = await asyncio.gather(*(one(i) for i in range(50)))
        assert statuses == [200] * 50
        answered = await asyncio.gather(*(silent(rd) for rd, _ in slow))
        assert not any(answered), "slow clients were answered or dropped, so they did not hold their slots"
    finally:
        ticker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await ticker
        for _, w in slow:
            w.close()


async def test_connections_over_max_connections_are_refused_fast(
        make_router: RouterFactory, make_backend: BackendFactory, tmp_path: Path) -> None:
    b = await make_backend("b")
    cfg = base_config(tmp_path, {"b": b.url}, ROUTES)
    cfg["limits"].update({"max_connections": 20, "header_timeout": "30s", "idle_timeout": "30s"})
    r = await make_router(cfg)
    addr = r.host_port

    def scenario() -> tuple[list[tuple[bytes, bool]], list[int]]:
        socks = [connect(addr) for _ in range(40)]
        try:
            time.sleep(0.3)  # let the router accept them all, in order
            excess = [read_until_close(s, timeout=3.0) for s in socks[20:]]
            statuses = []
            for s in socks[:20]:
                s.sendall(get(addr, "/kept"))
                statuses.append(read_response(s).status)
            return excess, statuses
        finally:
            for s in socks:
                s.close()

    excess, statuses = await asyncio.to_thread(scenario)
    for data, closed in excess:
        assert closed, "a connection over max_connections was left open"
        assert data == b"" or data.startswith(b"HTTP/1.1 503 "), data[:200]
    assert statuses == [200] * 20


async def silent(reader: asyncio.StreamReader) -> bool:
    """True if the router already sent something (or closed) on this connection."""
    try:
        await asyncio.wait_for(reader.read(1), 0.05)
    except TimeoutError:
        return False
    return True


def _reset(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def test_file_descriptors_return_to_baseline_after_a_burst(sized: tuple[Address, H11Backend, int]) -> None:
    addr, _, pid = sized
    assert request_once(addr, get(addr, "/warm")).status == 200
    baseline = fd_count(pid)

    socks = [connect(addr) for _ in range(300)]
    try:
        assert wait_until(lambda: fd_count(pid) >= baseline + 250, timeout=10), \
            f"the router did not accept the burst: {fd_count(pid)} fds, baseline {baseline}"
        for i, s in enumerate(socks):
            if i % 3:
                s.sendall(b"GET /partial HTTP/1.1\r\nHost: x\r\nX-A: ")
    finally:
        for i, s in enumerate(socks):
            _reset(s) if i % 3 == 2 else s.close()

    assert wait_until(lambda: fd_count(pid) <= baseline + 30, timeout=10), \
        f"router holds {fd_count(pid)} fds after the burst closed (baseline {baseline})"
