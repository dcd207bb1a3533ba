"""The data-plane listener: HTTP/1.1 connections from clients, parsed strictly with llhttp.

A raw asyncio protocol rather than aiohttp's web server: the per-request overhead of a framework
request object was the difference between meeting and missing the throughput target. Parsing and
its limits are in `reqparse.RequestReader`. Requests are handled one at a time per connection, in
order; a pipelined request waits, with reading paused. A client whose answers pile up unsent
(over `client_write_buffer`) is not read until it catches up, so memory per connection is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Final, cast

import httptools

from router.analysis.protocols import protocol_of_path
from router.dataplane import fastparse
from router.dataplane.http11 import error_response
from router.dataplane.proxy import Exchange
from router.dataplane.reqparse import Rejected, RequestReader
from router.dataplane.request import Header, Request

if TYPE_CHECKING:
    from router.runtime import Runtime

log = logging.getLogger("router.dataplane.server")
# Final aliases: compiled code reads a Final module name from a C static; a name imported with
# `from time import ...` is a dict lookup in the module's globals on every call.
monotonic: Final = time.monotonic
perf_counter: Final = time.perf_counter
read_request: Final = fastparse.read_request
_NEVER: Final = float("inf")
CLIENT_READING = "client to read the response"
LINGERING = "lingering close"
# After an error response that closes the connection, keep reading and discarding what the client
# still sends (nginx's lingering_close), so that a client sending its whole body before reading
# gets the response instead of a reset: at most LINGER_TIME in all, LINGER_IDLE between reads,
# LINGER_BYTES in all.
LINGER_TIME = 30.0
LINGER_IDLE = 5.0
LINGER_BYTES = 64 * 1024 * 1024
_LINGER_ZERO = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close sends a reset
_VERSIONS: Final = {"1.1": b"1.1", "1.0": b"1.0"}  # the only ones on_headers_complete lets through
_DEFAULT_WRITE_BUFFER = 64 * 1024  # uvloop's and asyncio's own high-water mark


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
        factory = cast(Callable[[], asyncio.Protocol], lambda: ClientConnection(self))
        self.server = await loop.create_server(factory, host, port,
                                               backlog=2048, reuse_address=True, reuse_port=reuse_port or None)
        self._sweeper = loop.call_later(self.SWEEP_INTERVAL, self._sweep)

    def _sweep(self) -> None:
        loop = asyncio.get_running_loop()
        now = monotonic()
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


class ClientConnection(RequestReader):
    """One client connection: run its requests in order, bound what it may queue, enforce deadlines.

    An asyncio protocol by duck typing (uvloop and asyncio look the methods up, they never check the
    class): inheriting `asyncio.Protocol`, a Python class, would make mypyc compile this as a plain
    Python class whose every attribute access is a dict lookup, the hottest object of all.
    """

    def __init__(self, server: DataServer) -> None:
        self.server = server
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.exchange: Exchange | None = None
        self.queue: deque[Request] = deque()
        self.closed = False
        self.pending_reject: bytes | None = None
        self.deadline = _NEVER  # time.monotonic() when on_deadline fires
        self.deadline_reason = ""
        self._write_paused = False  # the client's output buffer is over its high-water mark
        self._reading_paused = False
        self._running = False  # inside _next's loop: a nested call leaves the work to it
        self._lingering = False
        self._linger_left = 0
        self._linger_end = 0.0
        # The last request read in one pass: its header fields, and what reading them made. Clients
        # send the same fields on every request of a connection; the next request with equal ones
        # takes the same headers list and index (no one changes them once the request is read).
        self._last_names: list[bytes] | None = None
        self._last_values: list[bytes] | None = None
        self._last_headers: list[Header] = []
        self._last_index: dict[bytes, bytes] = {}
        self._last_fields_size = 0
        RequestReader.__init__(self, server.runtime().config.limits)

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
        if self._limits.client_write_buffer != _DEFAULT_WRITE_BUFFER:
            high = self._limits.client_write_buffer
            transport.set_write_buffer_limits(high, high // 4)  # type: ignore[attr-defined]
        self.set_deadline(self._limits.header_timeout, "request headers")

    def data_received(self, data: bytes) -> None:
        if self.closed:
            if self._lingering:
                self._discard(len(data))
            return
        if not self._in_head and not self._in_body:
            # Between requests, llhttp waits at the start of the next one: a whole common request
            # in this read may skip it (fastparse says which, and reads them as llhttp would).
            fields = read_request(data)
            if fields is not None:
                method, target, names, values, body, _ = fields
                self._read_fast(method, target, names, values, body)
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
            # llhttp stops after a request asking to switch protocols. h2c was answered in
            # HTTP/1.1 and closes; anything else was refused in on_message_complete.
            if not self._upgrade_ignored:
                self._reject(501, "protocol upgrades (Upgrade, CONNECT) are not supported")
            return
        except httptools.HttpParserError as exc:
            self._reject(400, f"malformed request: {exc}")
            return
        if self._in_head and self._head_bytes > self._max_header_size:
            self._reject(431, f"request head larger than {self._max_header_size} bytes")

    def _read_fast(self, method: bytes, target: bytes, names: list[bytes], values: list[bytes], body: bytes) -> None:
        """The callbacks llhttp would make for this request, in its order, as native calls (less the
        head and body deadlines: the request is whole, and what runs it next sets the deadline);
        errors are answered as data_received answers them when they come through llhttp."""
        try:
            self.begin_message()
            self.on_url(target)
            if names == self._last_names and values == self._last_values:
                self._headers, self._index = self._last_headers, self._last_index
                self._head_size += self._last_fields_size  # their count and names passed before
                if self._head_size > self._max_header_size:
                    raise Rejected(431, f"request head larger than {self._max_header_size} bytes")
            else:
                for i in range(len(names)):
                    self.on_header(names[i], values[i])
                self._last_names, self._last_values = names, values
                self._last_headers, self._last_index = self._headers, self._index
                self._last_fields_size = self._head_size - len(target)
            self.head_complete("1.1")
            if body:
                self.add_body(body)
            self.message_complete(method, True)
        except Rejected as exc:
            self._reject(exc.status, str(exc))
        except Exception:
            log.exception("error while parsing a request")
            self._reject(500, "internal error while reading the request")

    def eof_received(self) -> bool | None:
        # A client that closes its side has gone, as nginx and Envoy treat it: closing here leads
        # to connection_lost, which cancels the backend request instead of letting it run on.
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._lingering = False
        self.server.connections.discard(self)
        if self.exchange is not None:
            self.exchange.abort()
        self.queue.clear()

    def pause_writing(self) -> None:
        # The client reads slower than we answer: stop reading the backend and the client (so
        # nothing piles up here: pipelined requests wait unread in the kernel) and give the
        # client a deadline to catch up, which no later request may move.
        ex = self.exchange
        if ex is not None and ex.upstream is not None and ex.upstream.sink is ex:
            # (A finished response's connection is back in the pool: pausing it would stall
            # whichever request takes it next.)
            ex.upstream.pause_reading()
        self._pause_reading()
        self.set_deadline(self._limits.idle_timeout, CLIENT_READING)
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        ex = self.exchange
        if ex is not None:
            if ex.upstream is not None and ex.upstream.sink is ex:
                ex.upstream.resume_reading()
            self.set_deadline(ex.timeout, "backend response body")
        else:
            self._next()

    # -- llhttp: the other callbacks are in RequestReader
    def on_message_complete(self) -> None:
        parser = self.parser
        self.message_complete(parser.get_method(), parser.should_keep_alive())

    def message_complete(self, method: bytes, keep_alive: bool) -> None:
        body = self._body
        req = Request(method, self._url, _VERSIONS[self._version], self._headers,
                      self._index, body[0] if len(body) == 1 else b"".join(body), keep_alive,
                      self.peer, self._started, self.forward_memo)
        self._in_body = False
        self._head_bytes = 0
        if req.method == b"CONNECT" or b"upgrade" in self._index:
            self._upgrade(req)
        if self.exchange is None and not self.queue and not self._write_paused:
            self._start(req)
        else:
            self.queue.append(req)
            self._pause_reading()  # bound what a pipelining client can queue

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
        if self.closed:
            return
        if not keep_alive:
            self.close()
            return
        self._next()

    def _next(self) -> None:
        """Run queued requests in order; then wait for the next one, or send a pending refusal.

        A loop, not recursion: requests the router answers itself finish inside `_start`.
        While the client's output buffer is full nothing starts and the deadline is its own.
        """
        if self._running:
            return
        self._running = True
        try:
            while self.queue:
                if self.closed or self.exchange is not None or self._write_paused:
                    return
                self._start(self.queue.popleft())
            if self.closed or self.exchange is not None or self._write_paused:
                return
        finally:
            self._running = False
        self.deadline = _NEVER
        if self.pending_reject is not None:
            self._write_and_close(self.pending_reject)
            return
        if self.draining:
            self.close()
            return
        if self._reading_paused:
            self._resume_reading()
        if self._in_head:
            # A head that arrived while the last request ran gets what is left of its deadline.
            left = self._limits.header_timeout - (perf_counter() - self._started)
            self.set_deadline(max(left, 0.0), "request headers")
        elif self._in_body:
            self._body_deadline()
        else:
            self.set_deadline(self._idle_timeout, "idle keep-alive")

    def _pause_reading(self) -> None:
        if not self._reading_paused and self.transport is not None:
            self._reading_paused = True
            self.transport.pause_reading()

    def _resume_reading(self) -> None:
        if self._reading_paused and self.transport is not None and self.pending_reject is None:
            self._reading_paused = False
            self.transport.resume_reading()

    def _reject(self, status: int, message: str) -> None:
        if self.pending_reject is not None:
            return
        # No route was matched yet: the error's shape follows the protocol the path shows.
        response = error_response(status, message, close=True, protocol=protocol_of_path(self._url))
        if self.exchange is not None or self.queue:
            # Earlier requests are still to be answered: send this after them, never interleaved.
            self.pending_reject = response
            self._pause_reading()
            return
        self._write_and_close(response)

    def _write_and_close(self, data: bytes) -> None:
        self.write(data)
        transport = self.transport
        if self.closed or transport is None or not transport.can_write_eof():
            self.close()
            return
        # Lingering close: end our side, then read and discard what the client still sends.
        self.closed = True
        self._lingering = True
        self._linger_left = LINGER_BYTES
        now = monotonic()
        self._linger_end = now + LINGER_TIME
        self.deadline, self.deadline_reason = now + LINGER_IDLE, LINGERING
        transport.write_eof()
        self._reading_paused = False
        transport.resume_reading()

    def _discard(self, n: int) -> None:
        self._linger_left -= n
        if self._linger_left <= 0:
            self.close()
        else:
            self.deadline = min(monotonic() + LINGER_IDLE, self._linger_end)

    def close_if_idle(self) -> None:
        if self.exchange is None and not self.queue and not self._in_head:
            self.close()

    def close(self) -> None:
        if self._lingering:
            self._lingering = False
            transport = self.transport
            if transport is not None and transport.get_write_buffer_size():
                self._reset()  # the client never read the error: drop it rather than keep it
            elif transport is not None:
                transport.close()
        elif not self.closed:
            self.closed = True
            if self.transport is not None:
                self.transport.close()

    def _reset(self) -> None:
        """Close with a reset: unsent responses are dropped at once. A plain close would leave
        them to the kernel, which keeps the socket (and its buffer) while the client reads nothing."""
        transport = self.transport
        if transport is None:
            return
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_ZERO)
        transport.abort()

    # -- deadlines
    def set_deadline(self, seconds: float, reason: str) -> None:
        if self._write_paused:
            return  # the client must read first: its deadline stands
        # monotonic(), as the sweep: a C call where loop.time() is a method looked up by name,
        # and this runs several times a request
        self.deadline = monotonic() + seconds
        self.deadline_reason = reason

    def on_deadline(self) -> None:
        self.deadline = _NEVER
        if self.closed:
            if self._lingering:
                self.close()
            return
        if self.deadline_reason == CLIENT_READING:
            log.info("closing a connection whose client stopped reading its response")
            self.closed = True
            self._reset()
            if self.exchange is not None:
                self.exchange.abort()
        elif self.exchange is not None:
            self.exchange.on_timeout()
        elif self.deadline_reason == "idle keep-alive":
            self.close()
        else:
            self._reject(408, f"timed out waiting for the {self.deadline_reason}")
