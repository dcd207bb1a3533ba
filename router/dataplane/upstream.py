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
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, cast

import httptools
from mypy_extensions import trait

from router.config import Endpoint
from router.dataplane import fastparse
from router.dataplane.request import Header

# a Final alias: compiled code reads it from a C static, not the module's globals
read_response: Final = fastparse.read_response
# header name as sent -> lower case: a dict lookup per header instead of a method call; bounded,
# whatever backends send
_LOWER: Final[dict[bytes, bytes]] = {}
_LOWER_MAX: Final = 4096
_NO_BODY_STATUS: Final = frozenset({204, 304})


class UpstreamError(Exception):
    """A backend failed. `kind` is a bounded label; `sent_nothing` means no response byte came."""

    def __init__(self, kind: str, message: str, *, sent_nothing: bool = True) -> None:
        super().__init__(message)
        self.kind = kind
        self.sent_nothing = sent_nothing


@trait
class ResponseSink:
    """Receives one response. Calls come in order: head, body*, then complete or error.

    A mypyc trait, not a typing Protocol: compiled, the connection then calls its sink (the
    Exchange, or the shadow's CaptureSink) natively instead of looking each method up by name.
    """

    def on_head(self, status: int, headers: list[Header], connection: bytes | None) -> None:
        raise NotImplementedError

    def on_body(self, data: bytes) -> None:
        raise NotImplementedError

    def on_complete(self) -> None:
        raise NotImplementedError

    def on_error(self, error: UpstreamError) -> None:
        raise NotImplementedError

    def flush(self) -> None:
        raise NotImplementedError


class HeadMemo:
    """What the relay made of a connection's last response head: its status line and the header
    lines passed on (`prefix`), the Content-Length and whether the backend sent chunked. A backend
    answers with the same header fields on most responses of a connection; `_read_fast` then hands
    on the same `headers` list, and the relay reuses this instead of going through them again."""

    __slots__ = ("chunked", "headers", "length", "prefix", "status")

    def __init__(self) -> None:
        self.headers: list[Header] | None = None
        self.status = 0
        self.prefix = b""
        self.length: bytes | None = None
        self.chunked = False


class UpstreamConnection:
    """One keep-alive connection to a backend, carrying one request at a time.

    An asyncio protocol by duck typing, not a subclass of `asyncio.Protocol`: see ClientConnection.
    """

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
        self._head_left = pool.spec.max_head  # bytes a response head may still take
        self._complete = False  # the response ended within this read; finished once it is parsed
        self.counted = True  # holds one of the pool's slots until it closes
        # The last response head read in one pass, and what it made: a next one with equal header
        # fields gets the same `headers` list (nobody changes one after on_head).
        self._last_names: list[bytes] | None = None
        self._last_values: list[bytes] | None = None
        self._last_headers: list[Header] = []
        self._last_has_length = False
        self._last_connection: bytes | None = None
        self.head_memo = HeadMemo()  # the relay's, kept here: it follows the headers list

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
        if not self._got_bytes and not self._head_request:
            # The first read of this response, with llhttp at the start of a message: a whole
            # common response may skip it (fastparse says which, and reads them as llhttp would).
            fields = read_response(data)
            if fields is not None:
                status, names, values, body, head_size = fields
                if head_size <= self._head_left:
                    self._got_bytes = True
                    self._read_fast(status, names, values, body)
                    sink.flush()
                    return
        self._got_bytes = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            if self._complete:
                self._reusable = False  # junk after a complete response: out of step, never reuse
            else:
                cause = exc.__context__ if isinstance(exc, httptools.HttpParserCallbackError) else exc
                self._fail(UpstreamError("bad_response", f"malformed response from backend: {cause}",
                                         sent_nothing=not self._head_done))
        except httptools.HttpParserUpgrade:
            if self._complete:
                self._reusable = False
            else:
                self._fail(UpstreamError("bad_response", "backend switched protocols unasked",
                                         sent_nothing=not self._head_done))
        if self._complete:
            # Only now, with the whole read parsed, is it known whether the connection may be reused.
            self._complete = False
            self._finish()
        elif not self._head_done and self.sink is not None:
            # Counted per read, not in callbacks: llhttp buffers an unfinished header line itself.
            self._head_left -= len(data)
            if self._head_left < 0:
                self._fail(UpstreamError("head_too_large", "backend sent a response head larger than "
                                         f"{self.pool.spec.max_head} bytes (max_response_header_size)"))
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

    def eof_received(self) -> bool | None:
        return None  # the transport closes; connection_lost decides what the close meant

    def pause_writing(self) -> None:
        pass  # one small request per connection: the kernel buffer takes it

    def resume_writing(self) -> None:
        pass

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
        self._head_left = self.pool.spec.max_head
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
        lname = _LOWER.get(name)
        if lname is None:
            lname = name.lower()
            if len(_LOWER) < _LOWER_MAX:
                _LOWER[name] = lname
        if lname == b"content-length":
            self._has_length = True
        elif lname == b"transfer-encoding":
            # Only chunked frames a response; with any other coding last, the close ends it.
            if value.rsplit(b",", 1)[-1].strip().lower() == b"chunked":
                self._has_length = True
        elif lname == b"connection":
            self._connection = value if self._connection is None else self._connection + b", " + value
        self._headers.append((lname, name, value))

    def _read_fast(self, status: int, names: list[bytes], values: list[bytes], body: bytes) -> None:
        """The callbacks llhttp would make for this response, in its order, as native calls; for
        the same header fields as the last response's, what they made then."""
        if names == self._last_names and values == self._last_values:
            self._headers = self._last_headers
            self._has_length = self._last_has_length
            self._connection = self._last_connection
        else:
            for i in range(len(names)):
                self.on_header(names[i], values[i])
            self._last_names, self._last_values, self._last_headers = names, values, self._headers
            self._last_has_length, self._last_connection = self._has_length, self._connection
        self.head_complete(status, True)
        if body and self.sink is not None:
            self.sink.on_body(body)
        if self.sink is not None:
            self._finish()

    def on_headers_complete(self) -> None:
        self.head_complete(self.parser.get_status_code(), self.parser.should_keep_alive())

    def head_complete(self, status: int, keep_alive: bool) -> None:
        if status < 200:
            self._headers = []  # interim (1xx): wait for the final response
            self._has_length = False
            self._connection = None
            return
        self._head_done = True
        headers = self._headers
        no_body = status in _NO_BODY_STATUS or self._head_request
        self._framed = self._has_length or no_body
        if not self._framed or not keep_alive:
            self._reusable = False
        assert self.sink is not None
        self.sink.on_head(status, headers, self._connection)
        if self._head_request:
            self._finish()

    def on_body(self, body: bytes) -> None:
        if self.sink is not None:
            self.sink.on_body(body)

    def on_message_begin(self) -> None:
        if self._complete:
            self._reusable = False  # a second response nobody asked for

    def on_message_complete(self) -> None:
        if self._head_done and self.sink is not None:
            self._complete = True

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
    max_head: int = 64 * 1024


class UpstreamPool:
    """Keep-alive connections to one backend endpoint, at most `max_connections` of them.

    Each endpoint has its own pool and cap, so a slow backend cannot take the connections or the
    waiting room of another. At the cap, at most `max_pending` requests wait for a connection; any
    more fail at once (503): a hung backend fails fast instead of piling up requests.
    """

    def __init__(self, spec: PoolSpec) -> None:
        self.spec = spec
        self.name = spec.backend
        self.warmed_at = -1e9  # when the mirror last opened a spare connection here (warm shadow pools)
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
            except asyncio.CancelledError:
                self._pass_on(waiter)
                raise
            finally:
                if waiter in self.waiters:
                    self.waiters.remove(waiter)
            if conn is not None and not conn.closed:
                return conn
            # None: a slot was freed for us. A connection that closed after it was handed over
            # freed its slot too; either way, loop (the cap is checked again) and connect.
        return await self._connect()

    def _pass_on(self, waiter: asyncio.Future[UpstreamConnection | None]) -> None:
        """A cancelled waiter may already hold a connection or a free slot: give it to the next."""
        if not waiter.done() or waiter.cancelled():
            return
        conn = waiter.result()
        if conn is not None and not conn.closed:
            self.release(conn)
        elif conn is None:
            self.open += 1  # _slot_freed takes it back and wakes the next waiter
            self._slot_freed()

    async def _connect(self) -> UpstreamConnection:
        self.open += 1
        loop = asyncio.get_running_loop()
        e = self.endpoint
        made: list[UpstreamConnection] = []

        def protocol() -> UpstreamConnection:
            made.append(UpstreamConnection(self))
            return made[0]

        try:
            async with asyncio.timeout(self.connect_timeout):
                await loop.create_connection(cast(Callable[[], asyncio.Protocol], protocol), e.host, e.port,
                                             ssl=self._ssl, server_hostname=e.host if self._ssl else None)
        except TimeoutError:
            self._give_back(made)
            raise UpstreamError("connect_timeout", f"backend {self.name!r} ({e.url}) did not accept a connection "
                                f"within {self.connect_timeout:g}s") from None
        except OSError as exc:
            self._give_back(made)
            kind = "connect_refused" if isinstance(exc, ConnectionRefusedError) else "connect_error"
            raise UpstreamError(kind, f"cannot connect to backend {self.name!r} at {e.url}: "
                                f"{exc.strerror or exc}") from None
        except BaseException:
            # Cancelled (the client left, or the route's timeout is shorter than connect_timeout):
            # the slot must come back, or the pool stays "full" of connections that never were.
            self._give_back(made)
            raise
        return made[0]  # create_connection made exactly one

    def _give_back(self, made: list[UpstreamConnection]) -> None:
        """Free the slot of a connect that failed, unless its half-made connection already did."""
        if made:
            if not made[0].counted:
                return
            made[0].counted = False
            made[0].close()
        self._slot_freed()

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
