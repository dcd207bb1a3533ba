"""Request bodies: a refused body is still answered readably, and a body must arrive at a minimum
average rate, not one byte just inside every header_timeout."""

from __future__ import annotations

import select
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.reliability.netkit import (
    Address,
    connect,
    parse_response,
    read_response,
    read_until_close,
    router_with_h11_backend,
)

H = b"Host: model.example\r\n"
ROUTES = [{"name": "all", "match": {"path_prefix": "/"}, "primary": "b"}]


@pytest.fixture(scope="module")
def router(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Address]:
    """max_body 1 MiB, header_timeout 1s, the default min_body_rate (512 B/s)."""
    tmp: Path = tmp_path_factory.mktemp("bodies")
    with router_with_h11_backend(tmp, ROUTES, {"max_body": "1MiB", "header_timeout": "1s"}) as (rp, _):
        yield rp.host_port


def whole_body_then_read(addr: Address, raw: bytes) -> bytes:
    """As Python's http.client does: send the entire request, only then read the response."""
    with connect(addr, timeout=20) as sock:
        sock.sendall(raw)
        data, _ = read_until_close(sock, timeout=20)
        return data


BIG = 8 << 20
OVERSIZED = {
    "content-length": b"POST /big HTTP/1.1\r\n" + H + b"Content-Length: %d\r\n\r\n" % BIG + b"x" * BIG,
    "chunked": b"POST /big HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n"
               + (b"10000\r\n" + b"x" * 0x10000 + b"\r\n") * (BIG // 0x10000) + b"0\r\n\r\n",
}


@pytest.mark.parametrize("raw", OVERSIZED.values(), ids=OVERSIZED.keys())
def test_client_sending_a_whole_oversized_body_before_reading_gets_the_413(router: Address, raw: bytes) -> None:
    outcomes = []
    for _ in range(5):
        try:
            outcomes.append(parse_response(whole_body_then_read(router, raw)).status)
        except (BrokenPipeError, ConnectionResetError) as exc:
            outcomes.append(type(exc).__name__)  # type: ignore[arg-type]
    assert outcomes == [413] * 5


def trickle_body(addr: Address, length: int, piece: bytes, every: float, give_up: float) -> tuple[bytes, bool]:
    """Send a head, then `piece` of the body every `every` seconds until the router answers, the
    body is complete, or `give_up` seconds pass. Returns what the router sent, and whether it
    answered while the body was still arriving (b"" if it did not)."""
    with connect(addr) as sock:
        sock.sendall(b"POST /slow HTTP/1.1\r\n" + H + b"Content-Length: %d\r\n\r\n" % length)
        sent = 0
        deadline = time.monotonic() + give_up
        while sent < length:
            if time.monotonic() > deadline:
                return b"", False
            if select.select([sock], [], [], every)[0]:
                return read_until_close(sock, timeout=5)[0], True  # answered (or closed) early
            n = min(len(piece), length - sent)
            try:
                sock.sendall(piece[:n])
            except (BrokenPipeError, ConnectionResetError):
                return read_until_close(sock, timeout=5)[0], True
            sent += n
        return read_response(sock).raw, False


def test_body_trickling_below_min_body_rate_gets_408(router: Address) -> None:
    data, early = trickle_body(router, 1000, b"x", every=0.2, give_up=10)  # 5 bytes/s, each within 1s
    assert early, "a body trickling at 5 bytes/s was still accepted after 10s"
    assert data.startswith(b"HTTP/1.1 408 "), data[:200]


def test_body_above_min_body_rate_may_take_longer_than_header_timeout(router: Address) -> None:
    data, _ = trickle_body(router, 6000, b"y" * 200, every=0.1, give_up=20)  # ~2 KB/s for ~3s
    assert parse_response(data).status == 200, data[:200]
