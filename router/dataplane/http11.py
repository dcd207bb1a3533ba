"""HTTP/1.1 pieces shared by both sides of the proxy: hop-by-hop headers, reasons, error bodies."""

from __future__ import annotations

import binascii
import json
import os
import re
from http import HTTPStatus
from typing import Final

# RFC 9110 section 7.6.1, plus the RFC 2616 list that proxies still strip. Lower-case bytes, as
# compared on the hot path.
HOP_BY_HOP = frozenset({
    b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer", b"trailers",
    b"transfer-encoding", b"upgrade", b"proxy-authenticate", b"proxy-authorization",
})

# Headers the proxy always writes itself; what the peer sent under these names is dropped.
REQUEST_OWN = frozenset({
    b"host", b"content-length", b"expect", b"x-forwarded-for", b"x-forwarded-proto",
    b"x-forwarded-host", b"x-request-id", b"via",
    b"x-shadow-request",  # marks the router's own mirrored copies; a client must not forge it
})
RESPONSE_OWN = frozenset({b"content-length", b"x-request-id", b"x-router-request-id", b"x-model-backend"})

# What the proxy skips when copying headers: hop-by-hop, plus those it writes itself.
SKIP_REQUEST: Final = HOP_BY_HOP | REQUEST_OWN
SKIP_RESPONSE: Final = HOP_BY_HOP | RESPONSE_OWN

_REQUEST_ID: Final = re.compile(rb"^[A-Za-z0-9._:-]{1,128}$")


# Final aliases: compiled code reads them from a C static (a module attribute or imported name
# would be a dict lookup on every call).
_urandom: Final = os.urandom
_hexlify: Final = binascii.hexlify


class _RandomIds:
    """128-bit ids from the OS's CSPRNG, unguessable from the ones a client has seen. One
    getrandom() call per 256 ids, not per request, hex-encoded a batch at a time (an id is then
    one slice); the buffer is dropped in a forked child so two workers never hand out the same ids."""

    ID_HEX = 32  # 16 random bytes
    BATCH = 4096  # random bytes per refill

    def __init__(self) -> None:
        self.hex = b""
        self.pos = 0
        os.register_at_fork(after_in_child=self.reset)

    def reset(self) -> None:
        self.hex, self.pos = b"", 0

    def next(self) -> bytes:
        pos = self.pos
        if pos >= len(self.hex):
            self.hex, pos = _hexlify(_urandom(self.BATCH)), 0
        self.pos = pos + self.ID_HEX
        return self.hex[pos:pos + self.ID_HEX]


_ids = _RandomIds()
new_request_id: Final = _ids.next

REASONS = {s.value: s.phrase.encode() for s in HTTPStatus}
REASONS[508] = b"Loop Detected"

STATUS_LINES: Final = {code: b"HTTP/1.1 %d %s\r\n" % (code, phrase) for code, phrase in REASONS.items()}


def status_line(code: int) -> bytes:
    line = STATUS_LINES.get(code)
    return line if line is not None else b"HTTP/1.1 %d Unknown\r\n" % code


def valid_request_id(value: bytes) -> bool:
    return _REQUEST_ID.match(value) is not None


def via_names(value: bytes) -> list[bytes]:
    """The received-by names in a Via header: `1.1 edge, HTTP/1.0 b (comment)` -> [edge, b]."""
    names = []
    for entry in value.split(b","):
        fields = entry.split()
        if len(fields) >= 2:
            names.append(fields[1])
    return names


_TOKENS_CACHE: Final[dict[bytes, frozenset[bytes]]] = {}
_TOKENS_CACHE_MAX: Final = 256


def tokens_of(connection: bytes) -> frozenset[bytes]:
    """`connection_tokens` of one Connection value, remembered: nearly every peer sends one of a
    few values (keep-alive, close), and this runs on every request and response."""
    tokens = _TOKENS_CACHE.get(connection)
    if tokens is None:
        tokens = connection_tokens([connection])
        if len(_TOKENS_CACHE) < _TOKENS_CACHE_MAX:
            _TOKENS_CACHE[connection] = tokens
    return tokens


def connection_tokens(values: list[bytes]) -> frozenset[bytes]:
    """Header names listed in Connection headers: hop-by-hop for this one connection."""
    out: set[bytes] = set()
    for value in values:
        for token in value.split(b","):
            token = token.strip().lower()
            if token:
                out.add(token)
    return frozenset(out)


def error_body(status: int, message: str, request_id: bytes | None = None, protocol: str | None = None) -> bytes:
    """The error body in the shape the route's protocol defines, so its clients can read it.

    Open Inference V2, KServe V1 and TF Serving: `{"error": "<message>"}` (tritonclient and the
    KServe SDK concatenate it into their exception text); OpenAI: `{"error": {"message", "type",
    "code", "param"}}`; otherwise the router's own `{"error": {"status", "reason", "message",
    "request_id"}}`. The request id is in the X-Request-Id header whatever the shape.
    """
    reason = REASONS.get(status, b"").decode()
    body: dict[str, object]
    if protocol in _STRING_ERROR:
        body = {"error": message}
    elif protocol == "openai":
        kind = "server_error" if status >= 500 else "invalid_request_error"
        code = reason.lower().replace(" ", "_").replace("-", "_") or str(status)
        body = {"error": {"message": message, "type": kind, "code": code, "param": None}}
    else:
        own: dict[str, object] = {"status": status, "reason": reason, "message": message}
        if request_id is not None:
            own["request_id"] = request_id.decode()
        body = {"error": own}
    return json.dumps(body).encode()


_STRING_ERROR = frozenset({"open-inference-v2", "kserve-v1", "tfserving"})


def error_response(
    status: int, message: str, request_id: bytes | None = None, *, close: bool = False,
    extra: list[tuple[bytes, bytes]] | None = None, protocol: str | None = None,
) -> bytes:
    """A complete JSON error response, ready to write; `protocol` picks the body's shape."""
    body = error_body(status, message, request_id, protocol)
    parts = [status_line(status), b"Content-Type: application/json\r\n",
             b"Content-Length: %d\r\n" % len(body)]
    if request_id is not None:
        parts.append(b"X-Request-Id: " + request_id + b"\r\n")
    for name, value in extra or ():
        parts.append(name + b": " + value + b"\r\n")
    if close:
        parts.append(b"Connection: close\r\n")
    parts.append(b"\r\n")
    parts.append(body)
    return b"".join(parts)
