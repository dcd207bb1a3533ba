"""Connections to backends: one pool per backend, strict HTTP/1.1 response parsing with llhttp.

This is the one seam to the network on the backend side. The proxy writes a complete request
(it builds the framing itself) and receives the response through a `ResponseSink`; bytes are
handed on as they arrive, so streamed responses are relayed, not buffered. A response that breaks
HTTP/1.1 framing closes its connection, which is then never reused.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections import deque
from dataclasses import dataclass
from typing import Protocol

import httptools

from router.config import Endpoint
from router.request import Header

_NO_BODY_STATUS = frozenset({204, 304})


class UpstreamError(Exception):
    """A backend failed. `kind` is a bounded label; `sent_nothing` means no response byte came."""

    def __init__(self, kind: str, message: str, *, sent_nothing: bool = True) -> None:
        super().__init__(message)
        self.kind = kind
        self.sent_nothing = sent_nothing


class ResponseSink(Protocol):
    """Receives one response. Calls come in order: head, body*, then complete or error."""

    def on_head(self, status: int, headers: list[Header], connection: bytes | None) -> None: ...
    def on_body(self, data: bytes) -> None: ...
    def on_complete(self) -> None: ...
    def on_error(self, error: UpstreamError) -> None: ...
    def flush(self) -> None: ...


class UpstreamConnection(asyncio.Protocol):
    """One keep-alive connection to a backend, carrying one request at a time."""

    def __init__(self, pool: UpstreamPool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.sink: ResponseSink | None = None
        self.closed = False
        self.uses = 0
        self._headers: list[Header] = []
        self._has_length = False
        self._connection: bytes | None = None
        self._head_done = False
        self._got_bytes = False
        self._framed = True  # False: the body ends when the backend closes
        self._reusable = True
        self._head_request = False
        self.counted = True  # holds one of the pool's slots until it closes

    # -- asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            # Never let Nagle hold back a write until the backend's (delayed) ACK: live and shadow
            # latencies must measure the model, not TCP timers. asyncio and uvloop set it today.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        sink = self.sink
        if sink is None:
            # Bytes nobody asked for: the backend is out of step; never reuse this connection.
            self.close()
            return
        self._got_bytes = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            cause = exc.__context__ if isinstance(exc, httptools.HttpParserCallbackError) else exc
            self._fail(UpstreamError("bad_response", f"malformed response from backend: {cause}",
                                     sent_nothing=not self._head_done))
        except httptools.HttpParserUpgrade:
            self._fail(UpstreamError("bad_response", "backend switched protocols unasked",
                                     sent_nothing=not self._head_done))
        sink.flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool.forget(self)
        sink = self.sink
        if sink is None:
            return
        if self._head_done and not self._framed:
            self._finish()  # close-delimited body: the close is its end
        else:
            kind = "closed_before_headers" if not self._head_done else "closed_mid_body"
            self._fail(UpstreamError(kind, "backend closed the connection before the response was complete",
                                     sent_nothing=not self._got_bytes))
        sink.flush()

    def pause_reading(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.resume_reading()

    # -- used by the proxy
    def send(self, data: bytes, sink: ResponseSink, *, head_request: bool = False) -> None:
        self.sink = sink
        self.uses += 1
        self._headers = []
        self._has_length = False
        self._connection = None
        self._head_done = False
        self._got_bytes = False
        self._framed = True
        # llhttp cannot be told a response answers HEAD, so such a connection is not reused.
        self._reusable = not head_request
        self._head_request = head_request
        assert self.transport is not None
        self.transport.write(data)

    def abandon(self) -> None:
        """The client went away or timed out: cancel the upstream request by closing."""
        self.sink = None
        self.close()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.pool.forget(self)
            if self.transport is not None:
                self.transport.close()

    # -- llhttp callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        lname = name.lower()
        if lname == b"content-length" or lname == b"transfer-encoding":
            self._has_length = True
        elif lname == b"connection":
            self._connection = value if self._connection is None else self._connection + b", " + value
        self._headers.append((lname, name, value))

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if status < 200:
            self._headers = []  # interim (1xx): wait for the final response
            self._has_length = False
            self._connection = None
            return
        self._head_done = True
        headers = self._headers
        no_body = status in _NO_BODY_STATUS or self._head_request
        self._framed = self._has_length or no_body
        if not self._framed or not self.parser.should_keep_alive():
            self._reusable = False
        assert self.sink is not None
        self.sink.on_head(status, headers, self._connection)
        if self._head_request:
            self._finish()

    def on_body(self, body: bytes) -> None:
        if self.sink is not None:
            self.sink.on_body(body)

    def on_message_complete(self) -> None:
        if self._head_done and self.sink is not None:
            self._finish()

    # -- internals
    def _finish(self) -> None:
        sink, self.sink = self.sink, None
        if self._reusable and not self.closed:
            self.pool.release(self)
        else:
            self.close()
        if sink is not None:
            sink.on_complete()

    def _fail(self, error: UpstreamError) -> None:
        sink, self.sink = self.sink, None
        self.close()
        if sink is not None:
            sink.on_error(error)


@dataclass(frozen=True, slots=True)
class PoolSpec:
    """What a pool connects to and its limits; pools with equal specs are reused across reloads."""

    backend: str
    endpoint: Endpoint
    max_connections: int
    max_pending: int
    connect_timeout: float


class UpstreamPool:
    """Keep-alive connections to one backend endpoint, at most `max_connections` of them.

    Each endpoint has its own pool and cap, so a slow backend cannot take the connections or the
    waiting room of another. At the cap, at most `max_pending` requests wait for a connection; any
    more fail at once (503): a hung backend fails fast instead of piling up requests.
    """

    def __init__(self, spec: PoolSpec) -> None:
        self.spec = spec
        self.name = spec.backend
        self.endpoint = spec.endpoint
        self.connect_timeout = spec.connect_timeout
        self.idle: list[UpstreamConnection] = []
        self.open = 0  # connections counted against the cap, idle or busy or connecting
        self.waiters: deque[asyncio.Future[UpstreamConnection | None]] = deque()
        self.closing = False
        self._ssl = ssl.create_default_context() if spec.endpoint.scheme == "https" else None
        self.authority = spec.endpoint.authority.encode()

    def acquire_nowait(self) -> UpstreamConnection | None:
        """An idle connection, newest first (the most likely still to be open), or None."""
        idle = self.idle
        while idle:
            conn = idle.pop()
            if not conn.closed:
                return conn
        return None

    async def acquire(self, wait_timeout: float) -> UpstreamConnection:
        """An idle connection, a new one, or, at the cap, the next one released."""
        conn = self.acquire_nowait()
        if conn is not None:
            return conn
        while self.open >= self.spec.max_connections:
            if len(self.waiters) >= self.spec.max_pending:
                raise UpstreamError("circuit_open", f"backend {self.name!r} is saturated: {self.open} connections "
                                    f"busy and {len(self.waiters)} requests waiting (max_pending)")
            waiter: asyncio.Future[UpstreamConnection | None] = asyncio.get_running_loop().create_future()
            self.waiters.append(waiter)
            try:
                conn = await asyncio.wait_for(waiter, wait_timeout)
            except TimeoutError:
                raise UpstreamError("pool_exhausted", f"backend {self.name!r} has no free "
                                    f"connection (max_connections={self.spec.max_connections})") from None
            finally:
                if waiter in self.waiters:
                    self.waiters.remove(waiter)
            if conn is not None:
                return conn
        return await self._connect()

    async def _connect(self) -> UpstreamConnection:
        self.open += 1
        loop = asyncio.get_running_loop()
        e = self.endpoint
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, conn = await loop.create_connection(
                    lambda: UpstreamConnection(self), e.host, e.port, ssl=self._ssl,
                    server_hostname=e.host if self._ssl else None)
        except TimeoutError:
            self._slot_freed()
            raise UpstreamError("connect_timeout", f"backend {self.name!r} ({e.url}) did not accept a connection "
                                f"within {self.connect_timeout:g}s") from None
        except OSError as exc:
            self._slot_freed()
            kind = "connect_refused" if isinstance(exc, ConnectionRefusedError) else "connect_error"
            raise UpstreamError(kind, f"cannot connect to backend {self.name!r} at {e.url}: "
                                f"{exc.strerror or exc}") from None
        return conn

    def release(self, conn: UpstreamConnection) -> None:
        """A connection finished its response cleanly and may be reused."""
        if self.closing:
            conn.close()
            return
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(conn)
                return
        self.idle.append(conn)

    def forget(self, conn: UpstreamConnection) -> None:
        """A connection closed: free its slot. Called once per connection."""
        if conn in self.idle:
            self.idle.remove(conn)
        if conn.counted:
            conn.counted = False
            self._slot_freed()

    def _slot_freed(self) -> None:
        self.open -= 1
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the waiter may now open a connection of its own
                return

    def close(self) -> None:
        """Close idle connections now; busy ones close when their response ends."""
        self.closing = True
        for conn in list(self.idle):
            conn.close()
        self.idle.clear()

    @property
    def busy(self) -> int:
        return self.open - len(self.idle)
