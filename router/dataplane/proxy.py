"""One proxied request: match the route, pick the backend, forward, relay the response.

The `Exchange` holds no policy of its own: routing is `RoutingTable.match`, the backend choice is
`policy.choose`, and the network is `UpstreamPool`. It is driven by callbacks, not a task per
request: when an idle keep-alive connection exists (the usual case) the request is written at once
and the response is relayed from the upstream connection's callbacks.
"""

from __future__ import annotations

import asyncio
import random
import time
from typing import TYPE_CHECKING, Final

from router.analysis.protocols import protocol_of_path
from router.control.ledger import LiveOutcome
from router.dataplane.clientside import ClientSide
from router.dataplane.http11 import (
    SKIP_REQUEST,
    SKIP_RESPONSE,
    error_response,
    new_request_id,
    status_line,
    tokens_of,
    valid_request_id,
    via_names,
)
from router.dataplane.llmproxy import LlmExchange
from router.dataplane.policy import RequestView, choose
from router.dataplane.table import BadModel
from router.dataplane.upstream import ResponseSink, UpstreamConnection, UpstreamError, UpstreamPool

if TYPE_CHECKING:
    from router.dataplane.balancer import BackendGroup
    from router.dataplane.request import Header, Request
    from router.dataplane.shadow import MirroredRequest
    from router.runtime import Runtime

# Final aliases: compiled code reads a Final module name from a C static; a name imported with
# `from time import ...` is a dict lookup in the module's globals on every call.
monotonic: Final = time.monotonic
perf_counter: Final = time.perf_counter
_draw: Final = random.random
_LENGTH_LINES_MAX: Final = 4096  # about 230 KB of lines; a longer body costs more than formatting anyway
_LENGTH_LINES: Final = [b"Content-Length: %d\r\n" % n for n in range(_LENGTH_LINES_MAX)]
_BODY_METHODS: Final = frozenset({b"POST", b"PUT", b"PATCH"})
_NOTHING: Final[frozenset[bytes]] = frozenset()
_IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE"})
_NEVER_SENT = frozenset({"connect_refused", "connect_timeout", "connect_error"})
_NO_ANSWER = frozenset({"closed_before_headers"})
_LOCAL_LIMITS = frozenset({"pool_exhausted", "circuit_open"})  # the router's own limits, not the endpoint's health


def upstream_request(req: Request, authority: bytes, via: bytes, extra: bytes = b"",
                     body: bytes | None = None) -> bytes:
    """The request as sent to a backend: hop-by-hop headers dropped, forwarding headers set.

    `extra` is complete header lines to add (the shadow marker); `body` replaces the request's
    (a model name rewritten for the backend).
    """
    memo = req.memo
    if memo is not None and memo.authority is authority and memo.via is via and memo.headers == req.headers:
        block = memo.block  # equal headers, same peer, backend and Via: the same block
    else:
        block = _forwarded_block(req, authority, via)
        if memo is not None:
            memo.headers, memo.authority, memo.via, memo.block = req.headers, authority, via, block
    if body is None:
        body = req.body
    # The line made once for the usual sizes of a prediction request, not formatted each time.
    size = len(body)
    length = b"" if not body and req.method not in _BODY_METHODS else \
        _LENGTH_LINES[size] if size < _LENGTH_LINES_MAX else b"Content-Length: %d\r\n" % size
    return b"".join((req.method, b" ", req.target, b" HTTP/1.1\r\nHost: ", authority, b"\r\n", block,
                     req.request_id, b"\r\n", extra, length, b"\r\n", body))


def _forwarded_block(req: Request, authority: bytes, via: bytes) -> bytes:
    """The client's headers less hop-by-hop ones, then the forwarding headers, to `X-Request-Id: `:
    everything that depends only on the headers, the peer, the backend and Via."""
    index = req.index
    connection = index.get(b"connection")
    drop = tokens_of(connection) if connection else _NOTHING
    parts: list[bytes] = []
    for lname, name, value in req.headers:
        if lname in SKIP_REQUEST or lname in drop:
            continue
        # appends, not `parts += (...)`: compiled, each is one PyList_Append and no tuple
        parts.append(name)
        parts.append(b": ")
        parts.append(value)
        parts.append(b"\r\n")
    xff = index.get(b"x-forwarded-for")
    prior_via = index.get(b"via")
    peer = req.peer.encode()
    parts += (b"X-Forwarded-For: ", xff + b", " + peer if xff else peer,
              b"\r\nX-Forwarded-Proto: http\r\nX-Forwarded-Host: ", index.get(b"host") or authority,
              b"\r\nVia: ", prior_via + b", " + via if prior_via else via, b"\r\nX-Request-Id: ")
    return b"".join(parts)


def _relayed_head(status: int, headers: list[Header], connection: bytes | None) -> tuple[bytes, bytes | None, bool]:
    """The status line and the backend's header lines the client gets (hop-by-hop and framing
    ones dropped), the backend's Content-Length, and whether it sent chunked."""
    parts = [status_line(status)]
    length: bytes | None = None
    chunked_upstream = False
    drop = tokens_of(connection) if connection else _NOTHING
    for lname, name, value in headers:
        if lname in SKIP_RESPONSE or lname in drop:
            if lname == b"content-length":
                length = value
            elif lname == b"transfer-encoding":
                chunked_upstream = True
            continue
        parts.append(name)
        parts.append(b": ")
        parts.append(value)
        parts.append(b"\r\n")
    return b"".join(parts), length, chunked_upstream


class Exchange(ResponseSink):
    """The life of one request: the sink for its upstream response, and the writer to the client."""

    __slots__ = ("attempts_left", "backend", "captured", "captured_encoding", "captured_size", "chunked", "client",
                 "close_after", "deadline", "done", "fell_back", "group", "head_sent", "llm", "out", "pair", "pool",
                 "req", "route_name", "rt", "status", "task", "timeout", "upstream")

    def __init__(self, client: ClientSide, req: Request, rt: Runtime) -> None:
        self.client = client
        self.req = req
        self.rt = rt
        self.route_name = ""
        self.backend = ""
        self.upstream: UpstreamConnection | None = None
        self.task: asyncio.Task[None] | None = None
        self.timeout = 0.0
        self.out: list[bytes] = []
        self.head_sent = False
        self.chunked = False
        self.close_after = not req.keep_alive
        self.status = 0
        self.done = False
        self.pair: MirroredRequest | None = None
        self.fell_back = False
        self.group: BackendGroup | None = None
        self.pool: UpstreamPool | None = None
        self.attempts_left = 0
        self.deadline = 0.0
        self.captured: list[bytes] | None = None  # response bytes kept for monitoring
        self.captured_size = 0
        self.captured_encoding: str | None = None  # its Content-Encoding, to decode before reading
        self.llm: LlmExchange | None = None  # LLM routes only: token meter, model rewrite, fallback

    # -- phase 1: decide where the request goes
    def start(self) -> None:
        req, rt = self.req, self.rt
        rid = req.index.get(b"x-request-id")
        # The router's own id keys feedback to this prediction: a client-chosen id could be chosen
        # to claim another's (or a future) prediction. The client's id is still forwarded and logged.
        req.own_id = new_request_id()
        req.request_id = rid if rid is not None and valid_request_id(rid) else req.own_id
        via = req.index.get(b"via")
        if via is not None and rt.via_name in via_names(via):
            # Our own Via entry: a route points back at this router (or a sibling with the same name).
            self._respond_error(508, f"request already passed through {rt.config.proxy.via!r} (Via: "
                                f"{via.decode('latin-1')}); a route points back at the router")
            return
        try:
            route = rt.table.match(req.method.decode("latin-1"), req.path, req.header, req.body)
        except BadModel as exc:
            self._respond_error(400, str(exc))
            return
        if route is None:
            self._respond_error(404, f"no route matches {req.method.decode('latin-1')} {req.path}")
            return
        self.route_name = route.name
        ledger = rt.ledger
        # A route without a candidate has no split to read (the admin API refuses one for it).
        percent = 0.0 if route.primary_only else ledger.percent(route.config)
        if route.simple and percent <= 0:
            choice = route.primary_choice
        else:
            hops = rt.config.proxy.trusted_hops
            choice = choose(route.config, percent, RequestView(req.header, req.query, lambda: req.client(hops)), _draw)
        rc = route.config
        ledger.chosen(route.name, choice)
        group = rt.groups[choice.backend]
        now = monotonic()
        pool = group.pick(now)
        if pool is None and choice.backend == rc.candidate:
            # The candidate has no endpoint in rotation: its share goes to the primary, counted
            # (for a rollout, as the candidate failing the request).
            ledger.fallback(route.name)
            group = rt.groups[rc.primary]
            pool = group.pick(now)
            self.fell_back = True
        if pool is None:
            pool = group.pick(now, panic=True)  # nothing healthy at all: try anyway rather than refuse
        assert pool is not None
        if route.llm:
            self.llm = LlmExchange(self, rc)
            group, pool = self.llm.around_cooling(group, pool, now)
        self.backend = group.name
        self.group = group
        group.earn()
        if route.shadowed:
            self.pair = rt.mirror.begin(rt, rc, req, group.name)
        monitor = rt.monitor
        if monitor is not None and monitor.wants_body(req.own_id):
            self.captured = []
        self.timeout = route.timeout
        self.deadline = perf_counter() + self.timeout
        self.attempts_left = route.retries
        self.client.set_deadline(self.timeout, "backend response")
        self._dispatch(pool)

    def _dispatch(self, pool: UpstreamPool) -> None:
        self.pool = pool
        upstream = pool.acquire_nowait()
        if upstream is not None:
            self._send(upstream)
        else:
            self.task = self.client.loop.create_task(self._connect_and_send(pool))

    async def _connect_and_send(self, pool: UpstreamPool) -> None:
        try:
            upstream = await pool.acquire(self.timeout)
        except UpstreamError as exc:
            self.task = None
            self.on_error(exc)
            return
        self.task = None
        if self.done:
            pool.release(upstream)
        else:
            self._send(upstream)

    # -- phase 2: forward
    def _send(self, upstream: UpstreamConnection) -> None:
        self.upstream = upstream
        body = self.llm.sending(upstream.pool) if self.llm is not None else None
        data = upstream_request(self.req, upstream.pool.authority, self.rt.via, body=body)
        upstream.send(data, self, head_request=self.req.method == b"HEAD")

    # -- phase 3: relay (ResponseSink)
    def on_head(self, status: int, headers: list[Header], connection: bytes | None) -> None:
        if self.done or (self.llm is not None and self.llm.refused(status, headers)):
            return
        self.client.set_deadline(self.timeout, "backend response body")
        self.status = status
        memo = self.upstream.head_memo if self.upstream is not None else None
        if memo is not None and memo.headers is headers and memo.status == status:
            prefix, length, chunked_upstream = memo.prefix, memo.length, memo.chunked
        else:
            prefix, length, chunked_upstream = _relayed_head(status, headers, connection)
            if memo is not None:
                memo.headers, memo.status, memo.prefix, memo.length, memo.chunked = \
                    headers, status, prefix, length, chunked_upstream
        parts = [prefix]
        req = self.req
        no_body = req.method == b"HEAD" or status == 204 or status == 304
        if length is not None and not chunked_upstream:
            parts += (b"Content-Length: ", length, b"\r\n")
        elif not no_body:
            if req.version == b"1.1":
                self.chunked = True
                parts.append(b"Transfer-Encoding: chunked\r\n")
            else:
                self.close_after = True  # HTTP/1.0 client: the close marks the end of the body
        parts += (b"X-Request-Id: ", req.request_id, b"\r\nX-Router-Request-Id: ", req.own_id, b"\r\n")
        if self.rt.backend_header and self.group is not None:
            parts.append(self.group.header_line)
        if self.close_after or self.client.draining:
            self.close_after = True
            parts.append(b"Connection: close\r\n")
        elif req.version == b"1.0":
            parts.append(b"Connection: keep-alive\r\n")
        parts.append(b"\r\n")
        if self.llm is not None and self.llm.hold(b"".join(parts)):
            pass  # nothing reaches the client before the first byte of the body: a fallback stays possible
        else:
            self.out.append(b"".join(parts))
            self.head_sent = True
        if self.pair is not None:
            self.pair.live_head(status, headers)
        if self.captured is not None:
            self.captured_encoding = next((v.decode("latin-1") for n, _, v in headers if n == b"content-encoding"),
                                          None)

    def on_body(self, data: bytes) -> None:
        if self.done or not data:
            return
        if self.llm is not None:
            self.llm.body(data)
        self.client.set_deadline(self.timeout, "backend response body")  # the body must keep moving
        if self.pair is not None:
            self.pair.live_body(data)
        captured = self.captured
        if captured is not None:
            self.captured_size += len(data)
            if self.captured_size <= self.rt.config.monitoring.capture_bytes:
                captured.append(data)
            else:
                self.captured = None  # too large to read a prediction from; not kept
        if self.chunked:
            self.out += (b"%x\r\n" % len(data), data, b"\r\n")
        else:
            self.out.append(data)

    def on_complete(self) -> None:
        if self.done:
            return
        if self.group is not None and self.pool is not None:
            self.group.report(self.pool, self.status < 500)
        if self.llm is not None:
            self.llm.release()
        if self.chunked:
            self.out.append(b"0\r\n\r\n")
        self._finish(self.status)

    def on_error(self, error: UpstreamError) -> None:
        if self.done:
            return
        self.rt.ledger.upstream_error(self.backend, error.kind)
        group, pool = self.group, self.pool
        if group is not None and pool is not None and error.kind not in _LOCAL_LIMITS:
            group.report(pool, False)
        if self.llm is not None and error.kind in _NEVER_SENT and self.llm.fall_back("connect_failure"):
            return
        if group is not None and self._may_retry(error, group):
            self.attempts_left -= 1
            self.rt.ledger.upstream_error(self.backend, "retried")
            self.upstream = None
            now = monotonic()
            retry_pool = group.pick(now, avoid=pool) or group.pick(now, panic=True)
            assert retry_pool is not None  # panic always picks
            self._dispatch(retry_pool)
            return
        if self.head_sent:
            # Too late for an error status: cut the connection so the response never looks complete.
            if self.llm is not None:
                self.llm.stream_error(str(error))
            self.close_after = True
            self._finish(self.status, broken=True)
            return
        status = 503 if error.kind in _LOCAL_LIMITS else 502
        self._respond_error(status, str(error))

    def _may_retry(self, error: UpstreamError, group: BackendGroup) -> bool:
        """Retry only where it cannot run a request twice unasked, within the timeout and the budget."""
        if self.head_sent or self.attempts_left <= 0 or perf_counter() >= self.deadline:
            return False
        if error.kind in _NEVER_SENT:
            safe = True  # the request never left the router
        else:
            safe = error.kind in _NO_ANSWER and error.sent_nothing and (
                self.req.method in _IDEMPOTENT or b"idempotency-key" in self.req.index)
        return safe and group.spend()

    def flush(self) -> None:
        out = self.out
        if out:
            self.client.write(out[0] if len(out) == 1 else b"".join(out))
            out.clear()

    # -- timeouts and the client going away
    def on_timeout(self) -> None:
        """The backend took longer than the route's timeout, for the head or between body pieces."""
        if self.done:
            return
        self._drop_upstream()
        self.rt.ledger.upstream_error(self.backend, "timeout")
        if self.group is not None and self.pool is not None:
            self.group.report(self.pool, False)
        if self.head_sent:
            self.close_after = True
            self._finish(self.status, broken=True)
        else:
            self._respond_error(504, f"backend {self.backend!r} did not answer within {self.timeout:g}s")

    def abort(self) -> None:
        """The client connection is gone: cancel the upstream request."""
        if self.done:
            return
        self._drop_upstream()
        self.close_after = True
        self._finish(499, broken=True, write=False)

    def _drop_upstream(self) -> None:
        if self.task is not None:
            self.task.cancel()
            self.task = None
        if self.upstream is not None and self.upstream.sink is self:
            self.upstream.abandon()

    # -- endings
    def _respond_error(self, status: int, message: str) -> None:
        extra = [(b"X-Model-Backend", self.backend.encode())] if self.backend and \
            self.rt.backend_header else None
        self.close_after = self.close_after or self.client.draining
        route = self.rt.table.by_name.get(self.route_name) if self.route_name else None
        protocol = route.config.protocol if route is not None and route.config.protocol else \
            protocol_of_path(self.req.path)
        self.out.append(error_response(status, message, self.req.request_id, close=self.close_after, extra=extra,
                                       protocol=protocol))
        self._finish(status)

    def _finish(self, status: int, *, broken: bool = False, write: bool = True) -> None:
        self.done = True
        if self.llm is not None:
            self.llm.finished(status, broken)
        if self.pair is not None:
            self.pair.live_done(status, broken)
        if write:
            self.flush()
        seconds = perf_counter() - self.req.started
        no_sample = self.fell_back or (self.llm is not None and self.llm.rerouted)
        self.rt.ledger.live(LiveOutcome(self.route_name, self.backend, status, seconds, no_sample))
        monitor = self.rt.monitor
        if monitor is not None and self.route_name and status != 499:
            body = b"".join(self.captured) if self.captured else None
            monitor.finished(self.req.own_id, self.route_name, self.backend, status, seconds, self.req.body, body,
                             shadowed=self.pair is not None, client_request_id=self.req.request_id,
                             encoding=self.captured_encoding)
        self.client.exchange_done(self, keep_alive=not (self.close_after or broken))
