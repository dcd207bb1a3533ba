"""Backends that refuse, hang, hang up or answer garbage: the client gets a clear, bounded answer.

The fake backends are raw asyncio servers, so they can misbehave in ways a framework would not
allow, and they record which connection (the router's source port) carried each request.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import RouterFactory, base_config, free_port
from tests.reliability.netkit import Address, get, parse_response, request_once, send_and_read

OK = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok"


class RawBackend:
    """Answers request number n with `answer(n)`: bytes to write, or None to say nothing and wait.

    With `hang_up`, the connection is closed right after the answer is written.
    """

    def __init__(self, answer: Callable[[int], bytes | None], *, hang_up: bool = False) -> None:
        self.answer = answer
        self.hang_up = hang_up
        self.ports: list[int] = []  # the router's source port of each request, in order
        self.got_request = asyncio.Event()
        self.closed_by_router = asyncio.Event()  # a connection with an unanswered request was closed
        self.server: asyncio.Server | None = None
        self.writers: set[asyncio.StreamWriter] = set()
        self.url = ""

    async def start(self) -> RawBackend:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"
        return self

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
        for writer in list(self.writers):
            writer.close()  # its handler then reads EOF and returns
        await asyncio.sleep(0)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        port = writer.get_extra_info("peername")[1]
        self.writers.add(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), 0)
                await reader.readexactly(length)
                n = len(self.ports)
                self.ports.append(port)
                self.got_request.set()
                out = self.answer(n)
                if out is None:
                    while await reader.read(65536):
                        pass
                    self.closed_by_router.set()
                    return
                writer.write(out)
                await writer.drain()
                if self.hang_up:
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.writers.discard(writer)
            writer.close()


@pytest.fixture
async def raw_backends() -> Any:
    started: list[RawBackend] = []

    async def make(answer: Callable[[int], bytes | None], *, hang_up: bool = False) -> RawBackend:
        backend = await RawBackend(answer, hang_up=hang_up).start()
        started.append(backend)
        return backend

    yield make
    for backend in started:
        await backend.stop()


def one_route(tmp_path: Path, name: str, url: str, **route: Any) -> dict[str, Any]:
    cfg = base_config(tmp_path, {name: url}, [{"name": "m", "match": {"path_prefix": "/"}, "primary": name,
                                               **route}])
    cfg["limits"]["drain_timeout"] = "1s"  # a request left hanging must not hold up the router's exit
    return cfg


async def call(addr: Address, path: str = "/") -> Any:
    return await asyncio.to_thread(request_once, addr, get(addr, path))


async def test_refused_connection_gives_502_naming_the_backend(make_router: RouterFactory, tmp_path: Path) -> None:
    r = await make_router(one_route(tmp_path, "gone-model", f"http://127.0.0.1:{free_port()}"))

    resp = await call(r.host_port)

    assert resp.status == 502
    assert resp.headers["content-type"].startswith("application/json")
    error = resp.json()["error"]
    assert error["status"] == 502 and "gone-model" in error["message"]


async def test_backend_closing_before_headers_gives_502(
        make_router: RouterFactory, raw_backends: Any, tmp_path: Path) -> None:
    b = await raw_backends(lambda n: b"", hang_up=True)
    r = await make_router(one_route(tmp_path, "closer", b.url))

    resp = await call(r.host_port)

    assert resp.status == 502
    assert resp.json()["error"]["status"] == 502


async def test_backend_closing_mid_body_cuts_the_client_connection(
        make_router: RouterFactory, raw_backends: Any, tmp_path: Path) -> None:
    partial = b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"x" * 100
    b = await raw_backends(lambda n: partial, hang_up=True)
    r = await make_router(one_route(tmp_path, "cutter", b.url))

    data, closed = await asyncio.to_thread(send_and_read, r.host_port, get(r.host_port, "/"), 5.0)

    resp = parse_response(data)
    assert resp.status == 200
    assert closed, "the client connection stayed open after the backend broke off the body"
    assert len(data.partition(b"\r\n\r\n")[2]) < 1000, "the client got a body as long as Content-Length promised"


async def test_hung_backend_gives_504_at_the_route_timeout(
        make_router: RouterFactory, raw_backends: Any, tmp_path: Path) -> None:
    b = await raw_backends(lambda n: None)
    r = await make_router(one_route(tmp_path, "sleeper", b.url, timeout="300ms"))

    started = time.monotonic()
    resp = await call(r.host_port)
    elapsed = time.monotonic() - started

    assert resp.status == 504
    message = resp.json()["error"]["message"]
    assert "sleeper" in message and "0.3s" in message, message
    assert elapsed < 3.0, f"504 took {elapsed:.1f}s for a 300ms timeout"


async def _disconnect_mid_request(make_router: RouterFactory, raw_backends: Any, tmp_path: Path,
                                  *, reset: bool) -> bool:
    """Send a request to a hung backend, go away, and report whether the backend saw the router hang up."""
    b = await raw_backends(lambda n: None)
    r = await make_router(one_route(tmp_path, "sleeper", b.url, timeout="30s"))
    host, port = r.host_port
    _, writer = await asyncio.open_connection(host, port)
    writer.write(get(r.host_port, "/slow"))
    await writer.drain()
    await asyncio.wait_for(b.got_request.wait(), 5)
    if reset:
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.close()
    with contextlib.suppress(ConnectionError):
        await writer.wait_closed()
    try:
        await asyncio.wait_for(b.closed_by_router.wait(), 3)
    except TimeoutError:
        return False
    return True


async def test_client_reset_cancels_the_backend_request(
        make_router: RouterFactory, raw_backends: Any, tmp_path: Path) -> None:
    cancelled = await _disconnect_mid_request(make_router, raw_backends, tmp_path, reset=True)
    assert cancelled, "the backend connection stayed open 3s after the client reset its connection"


async def test_client_close_cancels_the_backend_request(
        make_router: RouterFactory, raw_backends: Any, tmp_path: Path) -> None:
    cancelled = await _disconnect_mid_request(make_router, raw_backends, tmp_path, reset=False)
    assert cancelled, "the backend connection stayed open 3s after the client closed its connection"


MALFORMED = {
    "duplicate-content-length": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nok",
    "content-length-and-chunked": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n"
                                  b"2\r\nok\r\n0\r\n\r\n",
    "bad-status-code": b"HTTP/1.1 2000 OK\r\nContent-Length: 2\r\n\r\nok",
    "bad-protocol": b"HTXP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
    "nul-in-header": b"HTTP/1.1 200 OK\r\nX-Bad: a\x00b\r\nContent-Length: 2\r\n\r\nok",
    "space-in-header-name": b"HTTP/1.1 200 OK\r\nX Bad: a\r\nContent-Length: 2\r\n\r\nok",
    "obs-fold": b"HTTP/1.1 200 OK\r\nX-Bad: a\r\n b\r\nContent-Length: 2\r\n\r\nok",
}


@pytest.mark.parametrize("bad", MALFORMED.values(), ids=MALFORMED.keys())
async def test_malformed_backend_response_gives_502_and_its_connection_is_not_reused(
        make_router: RouterFactory, raw_backends: Any, tmp_path: Path, bad: bytes) -> None:
    b = await raw_backends(lambda n: bad if n == 0 else OK)  # keeps the connection open after the bad one
    r = await make_router(one_route(tmp_path, "liar", b.url))

    first = await call(r.host_port, "/first")
    second = await call(r.host_port, "/second")

    assert first.status == 502 and first.json()["error"]["status"] == 502
    assert second.status == 200 and second.body == b"ok"
    assert len(b.ports) == 2 and b.ports[0] != b.ports[1], \
        f"the second request reused the connection that carried the malformed response (ports {b.ports})"


async def test_well_formed_backend_responses_reuse_the_connection(
        make_router: RouterFactory, raw_backends: Any, tmp_path: Path) -> None:
    # The control for the test above: without a bad response, the port does repeat.
    b = await raw_backends(lambda n: OK)
    r = await make_router(one_route(tmp_path, "honest", b.url))

    statuses = [(await call(r.host_port, f"/{i}")).status for i in range(3)]

    assert statuses == [200, 200, 200]
    assert len(set(b.ports)) == 1, f"keep-alive connections were not reused (ports {b.ports})"
