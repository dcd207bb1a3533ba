"""Reading client requests with llhttp: size limits, strictness, and the request's own deadlines.

llhttp (the parser aiohttp's C extension also uses) rejects most malformed input; what it allows
but a proxy must not pass on (HTTP/2.0 in the request line, absolute-form targets, duplicate Host,
header names with underscores, Transfer-Encoding on HTTP/1.0 or with codings besides chunked,
trailers, protocol switches) is refused or dropped here. `ClientConnection` (server.py) builds on
this class and decides what happens to each complete request.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import TYPE_CHECKING, Final

import httptools

from router.config import Limits
from router.dataplane.clientside import ClientSide
from router.dataplane.http11 import connection_tokens
from router.dataplane.request import ForwardMemo, Header, Request

if TYPE_CHECKING:
    from router.dataplane.proxy import Exchange


class Rejected(Exception):
    """A request the router refuses before anything reaches a backend."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


# Final aliases: compiled code reads a Final module name from a C static; a name imported with
# `from time import ...` is a dict lookup in the module's globals on every call.
monotonic: Final = time.monotonic
perf_counter: Final = time.perf_counter
_LOWER: Final[dict[bytes, bytes]] = {}  # header name as sent -> lower case, for names that passed the check
_LOWER_MAX: Final = 4096  # distinct spellings remembered (a client cannot grow it without bound)


def _lower_checked(name: bytes) -> bytes:
    """The lower-case header name, after refusing an underscore, remembered for the next request:
    per header, one dict lookup instead of two method calls. `find`, not `in`: CPython's bytes `in`
    first tries the operand as an int and clears the TypeError."""
    if name.find(b"_") >= 0:
        # Some frameworks map X_Forwarded_For to X-Forwarded-For: never let it through.
        raise Rejected(400, f"header name with an underscore refused: {name.decode('latin-1')}")
    lname = name.lower()
    if len(_LOWER) < _LOWER_MAX:
        _LOWER[name] = lname
    return lname


class RequestReader(ClientSide):
    """The llhttp callbacks of one client connection, and the state of the request being parsed."""

    # owned by the connection; read here to place deadlines and the 100 Continue line
    transport: asyncio.Transport | None
    exchange: Exchange | None
    queue: deque[Request]
    deadline: float
    deadline_reason: str
    _write_paused: bool

    def __init__(self, limits: Limits) -> None:
        self.parser = httptools.HttpRequestParser(self)
        self.peer = ""
        self.forward_memo = ForwardMemo()  # this connection's requests' forwarded header block
        self._url = b""
        self._version = "1.1"
        self._headers: list[Header] = []
        self._index: dict[bytes, bytes] = {}
        self._body: list[bytes] = []
        self._body_size = 0
        self._in_head = False
        self._in_body = False
        self._head_bytes = 0
        self._head_size = 0
        self._started = 0.0
        self._body_base = 0.0  # body deadline before the min_body_rate credit; 0 until the body starts
        self._upgrade_ignored = False
        self._limits = limits
        self._inv_rate = 1.0 / limits.min_body_rate
        # the limits read on every request, as native fields (Limits is an interpreted dataclass)
        self._max_header_size = limits.max_header_size
        self._header_timeout = limits.header_timeout
        self._idle_timeout = limits.idle_timeout
        self._max_headers = limits.max_headers
        self._max_body = limits.max_body
        self._max_body_digits = len(str(limits.max_body))

    def on_message_begin(self) -> None:
        self.begin_message()
        if self.exchange is None:
            self.set_deadline(self._header_timeout, "request headers")

    def begin_message(self) -> None:
        """A request starts. (fastparse's reader calls this, not on_message_begin: with the whole
        request in hand, its head and body deadlines would be replaced before anything waits.)"""
        self._url = b""
        self._head_size = 0
        self._headers = []
        self._index = {}
        self._body = []
        self._body_size = 0
        self._in_head = True
        # perf_counter, not loop.time(): uvloop's clock ticks in whole milliseconds.
        self._started = perf_counter()

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._head_size += len(url)
        if self._head_size > self._max_header_size:
            raise Rejected(431, f"request head larger than {self._max_header_size} bytes")

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._in_body:
            return  # a chunked body's trailer: dropped, never a header (as nginx does)
        headers = self._headers
        if len(headers) >= self._max_headers:
            raise Rejected(431, f"more than {self._max_headers} request headers")
        # The head's size as parsed (it may all arrive in one read, which the byte count in
        # data_received cannot see).
        self._head_size += len(name) + len(value) + 4
        if self._head_size > self._max_header_size:
            raise Rejected(431, f"request head larger than {self._max_header_size} bytes")
        lname = _LOWER.get(name)
        if lname is None:
            lname = _lower_checked(name)
        index = self._index
        if lname in index:
            if lname == b"host":
                raise Rejected(400, "more than one Host header")
            index[lname] += b", " + value
        else:
            index[lname] = value
        headers.append((lname, name, value))

    def on_headers_complete(self) -> None:
        # Once per request (httptools formats a new string each call): on_message_complete reuses it.
        self.head_complete(self.parser.get_http_version())

    def head_complete(self, version: str) -> None:
        """The head is read (by llhttp or by fastparse, which knows the version without asking)."""
        self._in_head = False
        self._in_body = True
        self._head_bytes = 0
        self._body_base = 0.0
        self._version = version
        if version not in ("1.1", "1.0"):
            raise Rejected(400, f"unsupported HTTP version {version}")
        if self._url[:1] != b"/":
            raise Rejected(400, "request target must be a path (origin-form), e.g. /v1/models/x")
        index = self._index
        if version == "1.1" and b"host" not in index:
            raise Rejected(400, "HTTP/1.1 request without a Host header")
        te = index.get(b"transfer-encoding")
        if te is not None:
            if version == "1.0":
                raise Rejected(400, "Transfer-Encoding is not allowed in HTTP/1.0")
            te = te.lower()
            if te != b"chunked":
                # RFC 9112 6.3: without chunked last the length is unknowable (400); codings
                # before it (gzip, chunked) would be silently dropped, so: not implemented, as nginx.
                if te.rsplit(b",", 1)[-1].strip() != b"chunked":
                    raise Rejected(400, f"Transfer-Encoding must end with chunked: {te.decode('latin-1')}")
                raise Rejected(501, f"transfer coding not supported: {te.decode('latin-1')} (only chunked)")
        length = index.get(b"content-length")
        # llhttp checked it is one number; fewer digits than max_body's cannot be larger
        if length is not None and len(length) >= self._max_body_digits and int(length) > self._max_body:
            raise Rejected(413, f"request body larger than max_body ({self._max_body} bytes)")
        # Only when no earlier response is in progress, which the interim line would split.
        expect = index.get(b"expect")
        if expect is not None and expect.lower() == b"100-continue" and self.exchange is None \
                and not self.queue and self.transport:
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        self.add_body(body)
        if self.exchange is None:
            self._body_deadline()

    def add_body(self, body: bytes) -> None:
        self._body_size += len(body)
        if self._body_size > self._max_body:
            raise Rejected(413, f"request body larger than max_body ({self._max_body} bytes)")
        self._body.append(body)

    def _body_deadline(self) -> None:
        """The body must keep moving (a piece every header_timeout) and, after its first
        header_timeout, arrive at min_body_rate on average (as Apache's RequestReadTimeout MinRate)."""
        if self._write_paused:
            return
        now = monotonic()  # the clock of every connection deadline (server.ClientConnection)
        timeout = self._limits.header_timeout
        if self._body_base == 0.0:
            self._body_base = now + timeout
        self.deadline = min(now + timeout, self._body_base + self._body_size * self._inv_rate)
        self.deadline_reason = "request body"

    def _upgrade(self, req: Request) -> None:
        """One answer per request: a switch to another protocol (WebSocket, CONNECT) is refused;
        h2c, which a server may ignore, is answered in HTTP/1.1 and the connection then closed
        (llhttp parses nothing after an upgrade request)."""
        connection = self._index.get(b"connection")
        if req.method != b"CONNECT" and (connection is None or b"upgrade" not in connection_tokens([connection])):
            return  # Upgrade without Connection: upgrade is a plain request (the header is dropped)
        upgrade = self._index.get(b"upgrade", b"").strip().lower()
        if req.method != b"CONNECT" and upgrade == b"h2c":
            req.keep_alive = False
            self._upgrade_ignored = True
            return
        what = "CONNECT" if req.method == b"CONNECT" else f"Upgrade: {upgrade.decode('latin-1')}"
        raise Rejected(501, f"protocol switching is not supported ({what}); the router speaks HTTP/1.1 only")
