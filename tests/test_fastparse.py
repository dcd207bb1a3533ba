"""The fast reader of common messages (dataplane/fastparse.py) against llhttp itself.

Its one promise: for any bytes, it either declines (None) or reports exactly what llhttp reports
for a single complete keep-alive message that is all of those bytes. Hypothesis builds messages
from a grammar wide enough to reach every reason to decline (odd methods, versions, targets,
characters, framing headers, lengths, extra bytes), and mutates valid ones byte by byte.
"""

from __future__ import annotations

from typing import Any

import httptools
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from router.dataplane import fastparse
from router.dataplane.fastparse import read_request, read_response


class _Recorder:
    def __init__(self) -> None:
        self.messages = 0
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.body = b""
        self.in_message = False
        self.parser: Any = None
        self.keep_alive = False
        self.version = ""

    def on_headers_complete(self) -> None:
        # read here, as the router reads them: after the message, a response parser has reset
        self.keep_alive = self.parser.should_keep_alive()
        self.version = self.parser.get_http_version()

    def on_message_begin(self) -> None:
        self.in_message = True

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        self.messages += 1
        self.in_message = False


def _llhttp(data: bytes, response: bool) -> dict[str, Any] | None:
    """What llhttp reports, if `data` is exactly one complete keep-alive message; else None."""
    rec = _Recorder()
    parser = httptools.HttpResponseParser(rec) if response else httptools.HttpRequestParser(rec)
    rec.parser = parser
    try:
        parser.feed_data(data)
    except (httptools.HttpParserError, httptools.HttpParserUpgrade):
        return None
    if rec.messages != 1 or rec.in_message or not rec.keep_alive or rec.version != "1.1":
        return None
    out: dict[str, Any] = {"headers": rec.headers, "body": rec.body}
    if response:
        out["status"] = parser.get_status_code()
    else:
        out["method"] = parser.get_method()
        out["target"] = rec.url
    return out


def _fast(data: bytes, response: bool) -> dict[str, Any] | None:
    out: dict[str, Any]
    if response:
        answer = read_response(data)
        if answer is None:
            return None
        status, names, values, body, head_size = answer
        out = {"status": status}
    else:
        request = read_request(data)
        if request is None:
            return None
        method, target, names, values, body, head_size = request
        out = {"method": method, "target": target}
    assert data[head_size - 4:head_size] == b"\r\n\r\n" and data[head_size:] == body
    out.update(headers=list(zip(names, values, strict=True)), body=body)
    return out


def _check(data: bytes, response: bool) -> bool:
    fast = _fast(data, response)
    if fast is None:
        return False
    expected = _llhttp(data, response)
    assert expected is not None, f"fast path accepted what llhttp does not read as one keep-alive message: {data!r}"
    assert fast == expected, f"fast path and llhttp differ on {data!r}"
    return True


# -- a grammar that reaches every branch, valid and not: each part is mostly valid, with odd
# variants often enough that one message in seven or eight is one the fast path reads.
def _mostly(valid: list[bytes], odd: list[bytes], weight: int = 6) -> st.SearchStrategy[bytes]:
    return st.sampled_from(valid * weight + odd)


_NAMES = [b"Host", b"Content-Type", b"X-Request-Id", b"Accept", b"Keep-Alive", b"Date", b"Server", b"a",
          b"!#$%&'*+-.^`|~", b"Content-Lengthx", b"X-Upgrade"]
_ODD_NAMES = [b"content-length", b"CONTENT-LENGTH", b"Connection", b"connection", b"Transfer-Encoding", b"Upgrade",
              b"Expect", b"X_Under", b"", b"X Y", b"X\x00", b"\xff", b"X\t"]
_VALUE_BYTES = _mostly([b"a", b"Z", b"0", b"9", b" ", b"\t", b",", b"\xff", b"\x80", b":", b"\"", b"keep-alive",
                        b"Keep-Alive", b"/", b"=", b";"],
                       [b"\x7f", b"\x00", b"\r", b"\n", b"\x1f", b"close", b"chunked", b"100-continue"], weight=16)
_value = st.lists(_VALUE_BYTES, max_size=5).map(b"".join)
_length_value = st.one_of(st.integers(0, 40).map(lambda n: str(n).encode()),
                          st.sampled_from([b"", b"+3", b"-1", b"3 ", b" 3", b"03", b"1" * 16, b"0x10", b"3,3"]))


@st.composite
def _header(draw: st.DrawFn) -> bytes:
    name = draw(_mostly(_NAMES, _ODD_NAMES, weight=8))
    length = name.lower() == b"content-length" and draw(st.booleans())
    value = draw(_length_value if length else _value)
    ows = draw(st.sampled_from([b"", b" ", b" ", b"  ", b"\t", b" \t "]))
    sep = draw(_mostly([b":"], [b" :", b"", b"::"], weight=12))
    end = draw(_mostly([b"\r\n"], [b"\n", b"\r", b"\r\n "], weight=12))
    return name + sep + ows + value + end


@st.composite
def _message(draw: st.DrawFn, response: bool) -> bytes:
    if response:
        start = draw(_mostly([b"HTTP/1.1 "], [b"HTTP/1.0 ", b"HTTP/2.0 ", b"http/1.1 ", b"HTTP/1.1  "], weight=12))
        status = draw(_mostly([b"200", b"201", b"404", b"503", b"599", b"299"],
                              [b"204", b"304", b"100", b"600", b"099", b"2000", b"20", b"2x0"], weight=3))
        reason = draw(_mostly([b" OK", b" Not Found", b" ", b" \xffok", b" \tx", b" a:b"], [b"", b" a\x00b", b" a\rb"]))
        line = start + status + reason + b"\r\n"
    else:
        method = draw(_mostly([b"GET", b"POST", b"PUT", b"DELETE", b"PATCH", b"HEAD", b"OPTIONS"],
                              [b"CONNECT", b"TRACE", b"PROPFIND", b"get", b"FOO", b""], weight=3))
        target = draw(_mostly([b"/", b"/v1/models/m/predict", b"/a?b=c&d=%20", b"/~:@!$&'()*+,;=", b"//x"],
                              [b"/a#frag", b"*", b"http://h/a", b"/a b", b"/a|{}", b"/\xff", b"", b"/\x00"], weight=3))
        version = draw(_mostly([b"HTTP/1.1"], [b"HTTP/1.0", b"HTTP/2.0", b"HTTP/1.1 ", b"HTTP/1.10"], weight=12))
        line = method + b" " + target + b" " + version + b"\r\n"
    headers = draw(st.lists(_header(), max_size=5))
    body = draw(st.binary(max_size=12))
    if draw(st.sampled_from([True] * 4 + [False])):
        delta = draw(st.sampled_from([0] * 10 + [-1, 1]))
        headers.insert(draw(st.integers(0, len(headers))),
                       b"Content-Length: " + str(max(len(body) + delta, 0)).encode() + b"\r\n")
    elif not response and draw(st.booleans()):
        body = b""  # a request without a length has no body
    tail = draw(_mostly([b""], [b"GET / HTTP/1.1\r\n\r\n", b"x", b"\r\n"], weight=12))
    return line + b"".join(headers) + b"\r\n" + body + tail


@st.composite
def _mutated(draw: st.DrawFn, response: bool) -> bytes:
    base = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{\"ok\": true}"
            if response else
            b"POST /v1/models/m/predict HTTP/1.1\r\nHost: h\r\nContent-Length: 12\r\n\r\n{\"inputs\": 1}")
    data = bytearray(base)
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(0, len(data)))
        op = draw(st.sampled_from(["insert", "replace", "delete"]))
        byte = draw(st.integers(0, 255))
        if op == "insert":
            data[at:at] = bytes([byte])
        elif at < len(data):
            if op == "replace":
                data[at] = byte
            else:
                del data[at]
    return bytes(data)


_SETTINGS = settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@_SETTINGS
@given(_message(response=False))
@example(b"POST /a HTTP/1.1\r\nHost: x \t\r\nX:  a b  \r\nContent-Length: 3\r\n\r\nabc")
def test_request_grammar(data: bytes) -> None:
    _check(data, response=False)


@_SETTINGS
@given(_message(response=True))
@example(b"HTTP/1.1 200 OK\r\nX:\t\r\nContent-Length: 2\r\n\r\nok")
def test_response_grammar(data: bytes) -> None:
    _check(data, response=True)


@_SETTINGS
@given(_mutated(response=False))
def test_request_mutations(data: bytes) -> None:
    _check(data, response=False)


@_SETTINGS
@given(_mutated(response=True))
def test_response_mutations(data: bytes) -> None:
    _check(data, response=True)


def test_the_common_messages_take_the_fast_path() -> None:
    """Declining everything would pass the tests above: these are the messages it exists for.
    (`make test` builds the extension first; without it every message goes to llhttp.)"""
    assert fastparse.AVAILABLE, "router/dataplane/_headscan.c is not built: run `make native`"
    assert _check(b"POST /v1/models/m/predict HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nContent-Length: 34\r\n"
                  b"Content-Type: application/json\r\n\r\n" + b"x" * 34, response=False)
    assert _check(b"GET /v1/models HTTP/1.1\r\nHost: h\r\nConnection: Keep-Alive\r\n\r\n", response=False)
    assert _check(b"HTTP/1.1 200 OK\r\nServer: nginx\r\nContent-Type: application/json\r\nContent-Length: 2\r\n"
                  b"Connection: keep-alive\r\n\r\n{}", response=True)
    assert _check(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n", response=True)


def test_what_llhttp_must_read_is_declined() -> None:
    declined_requests = [
        b"POST /a HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",  # chunked
        b"GET /a HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",  # the connection ends after it
        b"GET /a HTTP/1.0\r\nHost: h\r\n\r\n",  # another version
        b"GET /a HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
        b"POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nab",  # body not all here
        b"GET /a HTTP/1.1\r\nHost: h\r\n\r\nGET /b HTTP/1.1\r\nHost: h\r\n\r\n",  # pipelined
        b"GET /a HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx",
        b"GET /a HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\n\r\n",
    ]
    for data in declined_requests:
        assert read_request(data) is None, data
    declined_responses = [
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil close",  # no length
        b"HTTP/1.1 204 No Content\r\n\r\n",
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokextra",
    ]
    for data in declined_responses:
        assert read_response(data) is None, data


def test_repeated_fields_are_the_same_objects() -> None:
    """Names and short values come back as the objects of the message before (no allocation, and the
    router's lookups by name find a hash already computed); long ones are copied, and both read right."""
    long_value = b"v" * 300
    message = (b"POST /p HTTP/1.1\r\nHost: h\r\nX-Long: " + long_value + b"\r\nContent-Length: 2\r\n\r\nok")
    first, second = read_request(message), read_request(message)
    assert first is not None and second is not None
    assert all(a is b for a, b in zip(first[2], second[2], strict=True))
    assert first[3][0] is second[3][0]  # b"h"
    assert first[3][1] == second[3][1] == long_value
    assert _check(message, response=False)



def test_a_reader_takes_bytes_only() -> None:
    with pytest.raises(TypeError, match="read_request takes bytes, not str"):
        read_request("GET / HTTP/1.1\r\n\r\n")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="read_response takes bytes, not bytearray"):
        read_response(bytearray(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"))  # type: ignore[arg-type]
