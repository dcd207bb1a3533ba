"""The data-plane listener: HTTP/1.1 connections from clients, parsed strictly with llhttp.

A raw asyncio protocol rather than aiohttp's web server: the per-request overhead of a framework
request object was the difference between meeting and missing the throughput target. llhttp (the
parser aiohttp's C extension also uses) rejects most malformed input; what it allows but a proxy
must not pass on (HTTP/2.0 in the request line, absolute-form targets, duplicate Host, header
names with underscores, Transfer-Encoding on HTTP/1.0) is refused here. Requests are handled one
at a time per connection, in order; a pipelined request waits, with reading paused.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from time import perf_counter
from typing import TYPE_CHECKING

import httptools

from router.http11 import error_response
from router.proxy import Exchange
from router.request import Header, Request

if TYPE_CHECKING:
    from router.runtime import Runtime

log = logging.getLogger("router.server")
_NEVER = float("inf")
CLIENT_READING = "client to read the response"


class Rejected(Exception):
    """A request the router refuses before anything reaches a backend."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class DataServer:
    """Owns the listening socket, the open client connections and their deadlines.

    Deadlines (header, body, idle, backend timeouts) are checked by one sweep every
    `SWEEP_INTERVAL` seconds over all connections, instead of a timer per request: setting a
    deadline on the hot path is then a float store. Timeouts fire up to one interval late.
    """

    SWEEP_INTERVAL = 0.1

    def __init__(self, runtime: Callable[[], Runtime]) -> None:
        self.runtime = runtime
        self.connections: set[ClientConnection] = set()
        self.server: asyncio.Server | None = None
        self.draining = False
        self.rejected_connections = 0
        self.in_flight = 0  # requests being proxied now
        self._sweeper: asyncio.TimerHandle | None = None

    async def start(self, host: str, port: int, *, reuse_port: bool = False) -> None:
        """`reuse_port`: several worker processes accept on the same port (SO_REUSEPORT)."""
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(lambda: ClientConnection(self), host, port,
                                               backlog=2048, reuse_address=True, reuse_port=reuse_port or None)
        self._sweeper = loop.call_later(self.SWEEP_INTERVAL, self._sweep)

    def _sweep(self) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        for conn in [c for c in self.connections if c.deadline <= now]:
            conn.on_deadline()
        self._sweeper = loop.call_later(self.SWEEP_INTERVAL, self._sweep)

    def active_exchanges(self) -> int:
        return sum(1 for c in self.connections if c.exchange is not None or c.queue)

    async def drain(self, timeout: float) -> bool:
        """Stop accepting, let requests in flight finish, close the rest. True if all finished."""
        self.draining = True
        if self.server is not None:
            self.server.close()
        for conn in list(self.connections):
            conn.close_if_idle()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.active_exchanges() and loop.time() < deadline:
            await asyncio.sleep(0.05)
        clean = not self.active_exchanges()
        for conn in list(self.connections):
            conn.close()
        if self._sweeper is not None:
            self._sweeper.cancel()
        return clean


class ClientConnection(asyncio.Protocol):
    """One client connection: parse, enforce limits and deadlines, run exchanges in order."""

    def __init__(self, server: DataServer) -> None:
        self.server = server
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.peer = ""
        self.exchange: Exchange | None = None
        self.queue: deque[Request] = deque()
        self.closed = False
        self.pending_reject: bytes | None = None
        self.deadline = _NEVER  # loop time when on_deadline fires
        self.deadline_reason = ""
        # the request being parsed
        self._url = b""
        self._headers: list[Header] = []
        self._index: dict[bytes, bytes] = {}
        self._body: list[bytes] = []
        self._body_size = 0
        self._in_head = False
        self._in_body = False
        self._head_bytes = 0
        self._head_size = 0
        self._started = 0.0
        self._limits = server.runtime().config.limits

    @property
    def draining(self) -> bool:
        return self.server.draining

    # -- asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.peer = str(peer[0]) if isinstance(peer, tuple) else "unix"
        if len(self.server.connections) >= self._limits.max_connections:
            self.server.rejected_connections += 1
            self.closed = True
            transport.write(error_response(503, "too many connections", close=True))  # type: ignore[attr-defined]
            transport.close()
            return
        self.server.connections.add(self)
        self.set_deadline(self._limits.header_timeout, "request headers")

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        if not self._in_body:
            self._head_bytes += len(data)  # bytes of a head that may be arriving one at a time
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            if isinstance(cause, Rejected):
                self._reject(cause.status, str(cause))
            else:
                log.exception("error while parsing a request", exc_info=cause)
                self._reject(500, "internal error while reading the request")
            return
        except httptools.HttpParserUpgrade:
            self._reject(501, "protocol upgrades (Upgrade, CONNECT) are not supported")
            return
        except httptools.HttpParserError as exc:
            self._reject(400, f"malformed request: {exc}")
            return
        if self._in_head and self._head_bytes > self._limits.max_header_size:
            self._reject(431, f"request head larger than {self._limits.max_header_size} bytes")

    def eof_received(self) -> bool | None:
        # A client that closes its side has gone, as nginx and Envoy treat it: closing here leads
        # to connection_lost, which cancels the backend request instead of letting it run on.
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.server.connections.discard(self)
        if self.exchange is not None:
            self.exchange.abort()
        self.queue.clear()

    def pause_writing(self) -> None:
        # The client reads slower than the backend sends: stop reading the backend (so nothing
        # piles up here) and give the client a deadline to catch up.
        ex = self.exchange
        if ex is not None and ex.upstream is not None:
            ex.upstream.pause_reading()
        self.set_deadline(self._limits.idle_timeout, CLIENT_READING)

    def resume_writing(self) -> None:
        ex = self.exchange
        if ex is not None:
            if ex.upstream is not None:
                ex.upstream.resume_reading()
            self.set_deadline(ex.timeout, "backend response body")

    # -- llhttp callbacks
    def on_message_begin(self) -> None:
        self._url = b""
        self._head_size = 0
        self._headers = []
        self._index = {}
        self._body = []
        self._body_size = 0
        self._in_head = True
        # perf_counter, not loop.time(): uvloop's clock ticks in whole milliseconds.
        self._started = perf_counter()
        if self.exchange is None:
            self.set_deadline(self._limits.header_timeout, "request headers")

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._head_size += len(url)
        if self._head_size > self._limits.max_header_size:
            raise Rejected(431, f"request head larger than {self._limits.max_header_size} bytes")

    def on_header(self, name: bytes, value: bytes) -> None:
        if b"_" in name:
            # Some frameworks map X_Forwarded_For to X-Forwarded-For: never let it through.
            raise Rejected(400, f"header name with an underscore refused: {name.decode('latin-1')}")
        headers = self._headers
        if len(headers) >= self._limits.max_headers:
            raise Rejected(431, f"more than {self._limits.max_headers} request headers")
        # The head's size as parsed (it may all arrive in one read, which the byte count in
        # data_received cannot see).
        self._head_size += len(name) + len(value) + 4
        if self._head_size > self._limits.max_header_size:
            raise Rejected(431, f"request head larger than {self._limits.max_header_size} bytes")
        lname = name.lower()
        index = self._index
        if lname in index:
            if lname == b"host":
                raise Rejected(400, "more than one Host header")
            index[lname] += b", " + value
        else:
            index[lname] = value
        headers.append((lname, name, value))

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._in_body = True
        self._head_bytes = 0
        version = self.parser.get_http_version()
        if version not in ("1.1", "1.0"):
            raise Rejected(400, f"unsupported HTTP version {version}")
        if not self._url.startswith(b"/"):
            raise Rejected(400, "request target must be a path (origin-form), e.g. /v1/models/x")
        index = self._index
        if version == "1.1" and b"host" not in index:
            raise Rejected(400, "HTTP/1.1 request without a Host header")
        if version == "1.0" and b"transfer-encoding" in index:
            raise Rejected(400, "Transfer-Encoding is not allowed in HTTP/1.0")
        length = index.get(b"content-length")
        if length is not None and int(length) > self._limits.max_body:  # llhttp checked it is one number
            raise Rejected(413, f"request body larger than max_body ({self._limits.max_body} bytes)")
        # Only when no earlier response is in progress, which the interim line would split.
        expect = index.get(b"expect")
        if expect is not None and expect.lower() == b"100-continue" and self.exchange is None and self.transport:
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        self._body_size += len(body)
        if self._body_size > self._limits.max_body:
            raise Rejected(413, f"request body larger than max_body ({self._limits.max_body} bytes)")
        self._body.append(body)
        if self.exchange is None:
            self.set_deadline(self._limits.header_timeout, "request body")  # it keeps moving

    def on_message_complete(self) -> None:
        parser = self.parser
        body = self._body
        req = Request(parser.get_method(), self._url, parser.get_http_version().encode(), self._headers,
                      self._index, body[0] if len(body) == 1 else b"".join(body), parser.should_keep_alive(),
                      self.peer, self._started)
        self._in_body = False
        self._head_bytes = 0
        if self.exchange is None and not self.queue:
            self._start(req)
        else:
            self.queue.append(req)
            if self.transport is not None:
                self.transport.pause_reading()  # bound what a pipelining client can queue

    # -- running exchanges
    def _start(self, req: Request) -> None:
        rt = self.server.runtime()
        ex = Exchange(self, req, rt)
        self.exchange = ex
        self.server.in_flight += 1
        ex.start()

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(data)

    def exchange_done(self, ex: Exchange, *, keep_alive: bool) -> None:
        if self.exchange is ex:
            self.exchange = None
            self.server.in_flight -= 1
        self.deadline = _NEVER
        if self.closed:
            return
        if not keep_alive:
            self.close()
            return
        if self.pending_reject is not None:
            self._write_and_close(self.pending_reject)
            return
        if self.queue:
            self._start(self.queue.popleft())
            if not self.queue and self.transport is not None:
                self.transport.resume_reading()
        elif self.draining:
            self.close()
        elif not self._in_head:
            self.set_deadline(self._limits.idle_timeout, "idle keep-alive")

    def _reject(self, status: int, message: str) -> None:
        response = error_response(status, message, close=True)
        if self.exchange is not None or self.queue:
            # An earlier request is still being answered: send this after it, never interleaved.
            self.pending_reject = response
            self.queue.clear()
            if self.transport is not None:
                self.transport.pause_reading()
            return
        self._write_and_close(response)

    def _write_and_close(self, data: bytes) -> None:
        self.write(data)
        self.close()

    def close_if_idle(self) -> None:
        if self.exchange is None and not self.queue and not self._in_head:
            self.close()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            if self.transport is not None:
                self.transport.close()

    # -- deadlines
    def set_deadline(self, seconds: float, reason: str) -> None:
        self.deadline = self.loop.time() + seconds
        self.deadline_reason = reason

    def on_deadline(self) -> None:
        self.deadline = _NEVER
        if self.closed:
            return
        if self.deadline_reason == CLIENT_READING:
            log.info("closing a connection whose client stopped reading its response")
            self.close()
            if self.exchange is not None:
                self.exchange.abort()
        elif self.exchange is not None:
            self.exchange.on_timeout()
        elif self.deadline_reason == "idle keep-alive":
            self.close()
        else:
            self._reject(408, f"timed out waiting for the {self.deadline_reason}")
