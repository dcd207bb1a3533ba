"""Generated requests pass through the router unchanged: method, target, headers and body.

The backend parses what it receives with h11, so anything that is not well-formed HTTP/1.1 fails
the example. One router and one backend serve every example (they run outside the test's thread).
"""

from __future__ import annotations

import hashlib
import itertools
import string
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.reliability.netkit import (
    Address,
    H11Backend,
    Seen,
    connect,
    read_response,
    router_before_h11_backend,
)

TOKEN_CHARS = string.ascii_letters + string.digits + "!#$%&'*+-.^`|~"  # RFC 9110 tchar, less "_"
PATH_CHARS = string.ascii_letters + string.digits + "-._~!$&'()*+,;=:@"
QUERY_CHARS = PATH_CHARS.replace("&", "").replace("=", "") + "/?"
VALUE_CHARS = "".join(chr(c) for c in range(0x21, 0x7F)) + " "
# What the router owns or must drop; the generated headers stay clear of these.
RESERVED = {
    "host", "content-length", "transfer-encoding", "connection", "keep-alive", "proxy-connection", "te", "trailer",
    "trailers", "upgrade", "proxy-authenticate", "proxy-authorization", "expect", "x-forwarded-for",
    "x-forwarded-proto", "x-forwarded-host", "x-request-id", "via", "x-fuzz-id",
}


@dataclass(frozen=True)
class Generated:
    method: str
    target: str
    headers: list[tuple[str, str]]
    body: bytes
    chunks: list[int] | None  # None: sent with Content-Length

    def encode(self, marker: int) -> bytes:
        lines = [f"{self.method} {self.target} HTTP/1.1", "Host: fuzz.example", f"X-Fuzz-Id: {marker}"]
        lines += [f"{name}: {value}" for name, value in self.headers]
        if self.chunks is None:
            lines.append(f"Content-Length: {len(self.body)}")
            return ("\r\n".join(lines) + "\r\n\r\n").encode() + self.body
        lines.append("Transfer-Encoding: chunked")
        out, at = [("\r\n".join(lines) + "\r\n\r\n").encode()], 0
        sizes = itertools.chain(self.chunks, itertools.repeat(max(self.chunks or [1])))
        while at < len(self.body):
            piece = self.body[at:at + next(sizes)]
            out += [b"%x\r\n" % len(piece), piece, b"\r\n"]
            at += len(piece)
        out.append(b"0\r\n\r\n")
        return b"".join(out)


percent = st.integers(0, 255).map(lambda b: f"%{b:02X}")
segment = st.lists(st.one_of(st.sampled_from(PATH_CHARS), percent), max_size=12).map("".join)
path = st.lists(segment, min_size=1, max_size=5).map(lambda parts: "/" + "/".join(parts))
pair = st.tuples(*[st.lists(st.one_of(st.sampled_from(QUERY_CHARS), percent), max_size=8).map("".join)] * 2)
query = st.lists(pair, max_size=4).map(lambda pairs: "&".join(f"{k}={v}" for k, v in pairs))
target = st.tuples(path, st.one_of(st.none(), query)).map(lambda t: t[0] if t[1] is None else f"{t[0]}?{t[1]}")
header_name = st.text(TOKEN_CHARS, min_size=1, max_size=20).filter(lambda n: n.lower() not in RESERVED)
header_value = st.text(VALUE_CHARS, max_size=40).map(str.strip)
requests = st.builds(
    Generated,
    method=st.sampled_from(["GET", "POST", "PUT", "PATCH", "DELETE"]),
    target=target,
    headers=st.lists(st.tuples(header_name, header_value), max_size=10),
    body=st.binary(max_size=5000),
    chunks=st.one_of(st.none(), st.lists(st.integers(1, 2000), min_size=1, max_size=8)),
)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Address, H11Backend]]:
    with router_before_h11_backend(tmp_path_factory.mktemp("fuzz-forwarding")) as served:
        yield served


_markers = itertools.count()


def received(backend: H11Backend, marker: int) -> list[Seen]:
    tag = str(marker).encode()
    return [s for s in backend.snapshot() if (b"x-fuzz-id", tag) in s.headers]


@settings(max_examples=100, deadline=None, database=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(req=requests)
def test_generated_requests_arrive_unchanged(served: tuple[Address, H11Backend], req: Generated) -> None:
    addr, backend = served
    marker = next(_markers)
    with connect(addr) as sock:
        sock.sendall(req.encode(marker))
        resp = read_response(sock)

    assert backend.protocol_errors == [], backend.protocol_errors[-1:]
    assert resp.status == 200, resp.raw[:500]
    assert resp.headers.get("x-backend") == "h11"
    answer = resp.json()
    assert (answer["sha256"], answer["len"]) == (hashlib.sha256(req.body).hexdigest(), len(req.body))
    [seen] = received(backend, marker)
    assert seen.method == req.method.encode()
    assert seen.target == req.target.encode()
    assert seen.body == req.body
    head = seen.raw.partition(b"\r\n\r\n")[0] + b"\r\n"
    for name, value in req.headers:
        line = f"\r\n{name}: {value}\r\n".encode()
        assert line in head, f"{line!r} did not arrive as sent; the backend got {head!r}"
