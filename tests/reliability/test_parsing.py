"""Ambiguous or malformed requests: 400, a JSON body, a closed connection, and nothing forwarded.

A proxy that reads a request differently from the server behind it can be used to smuggle a
second request past it; the router must refuse every such request outright. One router and one
recording backend serve the whole module; after each case a well-formed sentinel request proves
the router is still serving and lets us check that it was the only thing the backend received.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import pytest

from tests.reliability.netkit import (
    Address,
    H11Backend,
    get,
    parse_response,
    request_once,
    router_before_h11_backend,
    send_and_read,
)

H = b"Host: model.example\r\n"
CHUNKED_BODY = b"3\r\nabc\r\n0\r\n\r\n"

CASES: dict[str, bytes] = {
    "content-length-with-transfer-encoding":
        b"POST /p HTTP/1.1\r\n" + H + b"Content-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n" + CHUNKED_BODY,
    "transfer-encoding-with-content-length":
        b"POST /p HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n" + CHUNKED_BODY,
    "duplicate-content-length-same":
        b"POST /p HTTP/1.1\r\n" + H + b"Content-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
    "duplicate-content-length-different":
        b"POST /p HTTP/1.1\r\n" + H + b"Content-Length: 3\r\nContent-Length: 5\r\n\r\nabcde",
    "content-length-list":
        b"POST /p HTTP/1.1\r\n" + H + b"Content-Length: 3, 3\r\n\r\nabc",
    "content-length-signed":
        b"POST /p HTTP/1.1\r\n" + H + b"Content-Length: +3\r\n\r\nabc",
    "transfer-encoding-xchunked":
        b"POST /p HTTP/1.1\r\n" + H + b"Transfer-Encoding: xchunked\r\n\r\n" + CHUNKED_BODY,
    "transfer-encoding-chunked-identity":
        b"POST /p HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked, identity\r\n\r\n" + CHUNKED_BODY,
    "transfer-encoding-two-headers":
        b"POST /p HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n"
        + CHUNKED_BODY,
    "transfer-encoding-identity":
        b"POST /p HTTP/1.1\r\n" + H + b"Transfer-Encoding: identity\r\n\r\nabc",
    "transfer-encoding-space-before-colon":
        b"POST /p HTTP/1.1\r\n" + H + b"Transfer-Encoding : chunked\r\n\r\n" + CHUNKED_BODY,
    "transfer-encoding-tab-before-colon":
        b"POST /p HTTP/1.1\r\n" + H + b"Transfer-Encoding\t: chunked\r\n\r\n" + CHUNKED_BODY,
    "transfer-encoding-vertical-tab-value":
        b"POST /p HTTP/1.1\r\n" + H + b"Transfer-Encoding:\x0bchunked\r\n\r\n" + CHUNKED_BODY,
    "transfer-encoding-leading-space-line":
        b"POST /p HTTP/1.1\r\n" + H + b" Transfer-Encoding: chunked\r\n\r\n" + CHUNKED_BODY,
    "transfer-encoding-on-http-1.0":
        b"POST /p HTTP/1.0\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n" + CHUNKED_BODY,
    "obs-fold-space": b"GET /p HTTP/1.1\r\n" + H + b"X-Note: one\r\n two\r\n\r\n",
    "obs-fold-tab": b"GET /p HTTP/1.1\r\n" + H + b"X-Note: one\r\n\ttwo\r\n\r\n",
    "bare-cr-between-headers": b"GET /p HTTP/1.1\r\nHost: model.example\rX-Note: one\r\n\r\n",
    "bare-cr-in-value": b"GET /p HTTP/1.1\r\n" + H + b"X-Note: a\rb\r\n\r\n",
    "bare-lf-line-endings": b"GET /p HTTP/1.1\nHost: model.example\n\n",
    "bare-lf-after-header": b"GET /p HTTP/1.1\r\nHost: model.example\nX-Note: one\r\n\r\n",
    "nul-in-header-value": b"GET /p HTTP/1.1\r\n" + H + b"X-Note: a\x00b\r\n\r\n",
    "nul-in-header-name": b"GET /p HTTP/1.1\r\n" + H + b"X-No\x00te: ab\r\n\r\n",
    "chunk-size-not-hex":
        b"POST /p HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
    "chunk-size-0x-prefix":
        b"POST /p HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n0x3\r\nabc\r\n0\r\n\r\n",
    "chunk-size-negative":
        b"POST /p HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n-3\r\nabc\r\n0\r\n\r\n",
    "chunk-size-overflow":
        b"POST /p HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\nfffffffffffffffff1\r\nabc\r\n0\r\n\r\n",
    "chunk-data-longer-than-size":
        b"POST /p HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n3\r\nabcX\r\n0\r\n\r\n",
    "duplicate-host": b"GET /p HTTP/1.1\r\nHost: model.example\r\nHost: other.example\r\n\r\n",
    "absolute-form-target": b"GET http://x/ HTTP/1.1\r\n" + H + b"\r\n",
    "http-2.0-request-line": b"GET /p HTTP/2.0\r\n" + H + b"\r\n",
    "http-0.9-request-line": b"GET /p\r\n\r\n",
    "missing-host-on-1.1": b"GET /p HTTP/1.1\r\n\r\n",
    "underscore-x-forwarded-for": b"GET /p HTTP/1.1\r\n" + H + b"X_Forwarded_For: 1.2.3.4\r\n\r\n",
    "underscore-content-length":
        b"POST /p HTTP/1.1\r\n" + H + b"Content_Length: 3\r\nContent-Length: 3\r\n\r\nabc",
}


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Address, H11Backend]]:
    with router_before_h11_backend(tmp_path_factory.mktemp("parsing")) as served:
        yield served


_sentinels = itertools.count()


@pytest.mark.parametrize("raw", CASES.values(), ids=CASES.keys())
def test_malformed_request_is_refused_with_400_and_never_forwarded(
        served: tuple[Address, H11Backend], raw: bytes) -> None:
    addr, backend = served
    before = len(backend.snapshot())

    data, closed = send_and_read(addr, raw)

    resp = parse_response(data)
    assert resp.status_line.startswith(b"HTTP/1.1 400 "), data[:300]
    assert resp.headers.get("content-type", "").startswith("application/json")
    assert resp.json()["error"]["status"] == 400
    assert closed, "the router kept the connection open after refusing the request"
    assert len(data) == data.index(b"\r\n\r\n") + 4 + len(resp.body), f"more than one response: {data!r}"
    # A sentinel on a new connection: the router still serves, and it is all the backend got.
    path = f"/sentinel/{next(_sentinels)}"
    assert request_once(addr, get(addr, path)).status == 200
    seen = backend.snapshot()[before:]
    assert [s.target for s in seen] == [path.encode()], f"backend received {[s.raw for s in seen]!r}"
    assert backend.protocol_errors == []


def test_underscore_header_never_reaches_backend_as_x_forwarded_for(served: tuple[Address, H11Backend]) -> None:
    addr, backend = served
    before = len(backend.snapshot())
    raw = b"GET /xff HTTP/1.1\r\n" + H + b"X_Forwarded_For: 1.2.3.4\r\n\r\n"

    data, _ = send_and_read(addr, raw)

    assert data.startswith(b"HTTP/1.1 400 ")
    request_once(addr, get(addr, "/after-xff"))
    for seen in backend.snapshot()[before:]:
        assert b"1.2.3.4" not in seen.raw, f"the spoofed address was passed on: {seen.raw!r}"


def test_malformed_request_pipelined_after_a_good_one_is_refused_in_order(
        served: tuple[Address, H11Backend]) -> None:
    addr, backend = served
    before = len(backend.snapshot())
    good = b"GET /pipelined-good HTTP/1.1\r\n" + H + b"\r\n"
    smuggled = CASES["content-length-with-transfer-encoding"].replace(b"POST /p ", b"POST /pipelined-bad ")

    data, closed = send_and_read(addr, good + smuggled)

    first = parse_response(data)
    second = parse_response(data[data.index(b"\r\n\r\n") + 4 + (first.content_length or 0):])
    assert first.status == 200, data[:300]
    assert second.status_line.startswith(b"HTTP/1.1 400 "), data[:600]
    assert closed
    assert [s.target for s in backend.snapshot()[before:]] == [b"/pipelined-good"]
