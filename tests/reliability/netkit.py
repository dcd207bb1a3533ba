"""Tools for the hardening tests: raw-socket clients, and an h11 backend that runs in its own thread.

The clients are blocking sockets: a test drives one from a worker thread (`asyncio.to_thread`) or
directly from a synchronous test. The backend and module-wide routers run on an event loop in a
background thread, so synchronous tests (Hypothesis) can share them and no test blocks the loop
that serves them.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import select
import socket
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import h11

from tests.helpers import RouterProcess, base_config

T = TypeVar("T")
Address = tuple[str, int]


# -- clients -----------------------------------------------------------------------------------

def connect(addr: Address, timeout: float = 5.0) -> socket.socket:
    sock = socket.create_connection(addr, timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def read_until_close(sock: socket.socket, timeout: float = 5.0) -> tuple[bytes, bool]:
    """Everything the peer sends until it closes; the flag says whether it closed within `timeout`."""
    deadline = time.monotonic() + timeout
    chunks = []
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            break
        except ConnectionResetError:
            return b"".join(chunks), True
        if not chunk:
            return b"".join(chunks), True
        chunks.append(chunk)
    return b"".join(chunks), False


def send_and_read(addr: Address, data: bytes, timeout: float = 3.0) -> tuple[bytes, bool]:
    """Send `data` in one write, then read until the router closes (or `timeout`)."""
    with connect(addr) as sock:
        sock.sendall(data)
        return read_until_close(sock, timeout)


def trickle_and_read(addr: Address, data: bytes, delay: float = 0.0002, timeout: float = 3.0) -> tuple[bytes, bool]:
    """Send `data` one byte per write, stopping as soon as the router answers or closes."""
    with connect(addr) as sock:
        for i in range(len(data)):
            readable, _, _ = select.select([sock], [], [], 0)
            if readable:
                break
            try:
                sock.sendall(data[i:i + 1])
            except (BrokenPipeError, ConnectionResetError):
                break
            time.sleep(delay)
        return read_until_close(sock, timeout)


def request_once(addr: Address, data: bytes, timeout: float = 5.0) -> Response:
    """Send one request, read its one response (framed by Content-Length), keep nothing open."""
    with connect(addr, timeout) as sock:
        sock.sendall(data)
        return read_response(sock, timeout)


def read_response(sock: socket.socket, timeout: float = 5.0) -> Response:
    """Read exactly one Content-Length-framed response from an open connection."""
    deadline = time.monotonic() + timeout
    buf = b""
    while True:
        _, sep, rest = buf.partition(b"\r\n\r\n")
        if sep:
            length = parse_response(buf).content_length
            if length is not None and len(rest) >= length:
                return parse_response(buf)
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"no complete response within {timeout}s; got {buf[:300]!r}")
        sock.settimeout(left)
        chunk = sock.recv(65536)
        if not chunk:
            return parse_response(buf)
        buf += chunk


@dataclass(frozen=True)
class Response:
    """The first response in some bytes read from the router."""

    raw: bytes
    status_line: bytes
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def content_length(self) -> int | None:
        value = self.headers.get("content-length")
        return None if value is None else int(value)

    def json(self) -> Any:
        return json.loads(self.body)


def parse_response(raw: bytes) -> Response:
    head, _, rest = raw.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ", 2)
    status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower().decode("latin-1")] = value.strip().decode("latin-1")
    length = headers.get("content-length")
    body = rest[:int(length)] if length is not None and length.isdigit() else rest
    return Response(raw, lines[0], status, headers, body)


def get(addr: Address, path: str = "/", extra: bytes = b"") -> bytes:
    """A well-formed GET, as bytes."""
    return b"GET %s HTTP/1.1\r\nHost: %s:%d\r\n%s\r\n" % (path.encode(), addr[0].encode(), addr[1], extra)


def wait_until(check: Callable[[], bool], timeout: float = 5.0, step: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(step)
    return check()


def fd_count(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/fd").iterdir()))


# -- a background event loop ---------------------------------------------------------------------

class ThreadLoop:
    """An event loop running in a daemon thread; `run` executes a coroutine there and waits."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="netkit-loop", daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        async def cancel_all() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        self.run(cancel_all())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


# -- a backend that parses with h11 --------------------------------------------------------------

@dataclass(frozen=True)
class Seen:
    """One request as the backend received it."""

    port: int  # the router's source port: which upstream connection carried it
    method: bytes
    target: bytes
    headers: list[tuple[bytes, bytes]]  # lower-case names, as h11 reports them
    body: bytes
    raw: bytes  # the bytes of this request exactly as they arrived


def ok_reply(seen: Seen) -> bytes:
    body = json.dumps({"sha256": hashlib.sha256(seen.body).hexdigest(), "len": len(seen.body),
                       "target": seen.target.decode("latin-1")}).encode()
    return (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Backend: h11\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body))


class H11Backend:
    """A raw TCP backend that parses requests strictly with h11, records each one and answers 200
    with the body's hash. Anything h11 refuses is recorded in `protocol_errors`, and the connection
    is closed."""

    def __init__(self, tl: ThreadLoop) -> None:
        self.tl = tl
        self.lock = threading.Lock()
        self.seen: list[Seen] = []
        self.protocol_errors: list[tuple[str, bytes]] = []
        self.server: asyncio.Server | None = None
        self.writers: set[asyncio.StreamWriter] = set()
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> H11Backend:
        async def start() -> None:
            self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
            self.port = self.server.sockets[0].getsockname()[1]
        self.tl.run(start())
        return self

    def stop(self) -> None:
        async def stop() -> None:
            if self.server is not None:
                self.server.close()
            for writer in list(self.writers):
                writer.close()  # its handler then reads EOF and returns
            await asyncio.sleep(0.01)
        self.tl.run(stop())

    def snapshot(self) -> list[Seen]:
        with self.lock:
            return list(self.seen)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        port = writer.get_extra_info("peername")[1]
        self.writers.add(writer)
        try:
            await self._requests(port, reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self.writers.discard(writer)
            writer.close()

    async def _requests(self, port: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h11.Connection(h11.SERVER)
        raw = b""
        request: h11.Request | None = None
        body: list[bytes] = []
        while True:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as exc:
                with self.lock:
                    self.protocol_errors.append((str(exc), raw))
                return
            if event is h11.NEED_DATA:
                data = await reader.read(65536)
                if not data:
                    if raw:
                        with self.lock:
                            self.protocol_errors.append(("connection closed mid-request", raw))
                    return
                raw += data
                conn.receive_data(data)
            elif isinstance(event, h11.Request):
                request = event
            elif isinstance(event, h11.Data):
                body.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                assert request is not None
                seen = Seen(port, bytes(request.method), bytes(request.target),
                            [(bytes(n), bytes(v)) for n, v in request.headers], b"".join(body), raw)
                with self.lock:
                    self.seen.append(seen)
                writer.write(ok_reply(seen))
                await writer.drain()
                # A fresh parser for the next request, fed whatever already followed this one.
                conn, raw, request, body = h11.Connection(h11.SERVER), conn.trailing_data[0], None, []
                if raw:
                    conn.receive_data(raw)
            elif isinstance(event, h11.ConnectionClosed):
                return


# -- a router started from synchronous code ------------------------------------------------------

@contextlib.contextmanager
def router_in_thread(tl: ThreadLoop, tmp: Path, config: dict[str, Any],
                     env: dict[str, str] | None = None) -> Iterator[RouterProcess]:
    """The router as a real process, for module-wide fixtures and synchronous tests."""
    rp = RouterProcess(tmp / "router.yaml", config)
    try:
        tl.run(rp.start(env))
        yield rp
    finally:
        rp.stop()


@contextlib.contextmanager
def router_with_h11_backend(tmp: Path, routes: list[dict[str, Any]] | None = None,
                            limits: dict[str, Any] | None = None) -> Iterator[tuple[RouterProcess, H11Backend]]:
    """A router (in a thread) in front of one h11-parsing backend named `b`, with extra `limits`,
    for module-wide fixtures; the routes default to one catch-all."""
    tl = ThreadLoop()
    backend = H11Backend(tl).start()
    routes = routes or [{"name": "all", "match": {"path_prefix": "/"}, "primary": "b"}]
    config = base_config(tmp, {"b": backend.url}, routes)
    config["limits"].update(limits or {})
    try:
        with router_in_thread(tl, tmp, config) as rp:
            yield rp, backend
    finally:
        backend.stop()
        tl.close()


@contextlib.contextmanager
def router_before_h11_backend(tmp: Path) -> Iterator[tuple[Address, H11Backend]]:
    """A router with one catch-all route to an h11-parsing backend, for module fixtures."""
    with router_with_h11_backend(tmp) as (rp, backend):
        yield rp.host_port, backend
