"""Pipelining clients: deadlines hold for every request on a connection, a client that never reads
cannot grow the router's memory, and one bad request does not take the good ones before it.
"""

from __future__ import annotations

import socket
import struct
import threading
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
ROUTES = [{"name": "api", "match": {"path_prefix": "/api"}, "primary": "b"}]
_TCP_ESTABLISHED = 1


@pytest.fixture(scope="module")
def router(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Address, int]]:
    """A router with one-second header and idle deadlines: (address, pid). Only /api is routed."""
    tmp: Path = tmp_path_factory.mktemp("pipelining")
    with router_with_h11_backend(tmp, ROUTES, {"header_timeout": "1s", "idle_timeout": "1s"}) as (rp, _):
        assert rp.proc is not None
        yield rp.host_port, rp.proc.pid


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS line")


def tcp_state(sock: socket.socket) -> int:
    """The kernel's TCP state of this socket (1: established; anything else: the peer closed)."""
    return int(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)[0])


def peer_closed_within(sock: socket.socket, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if tcp_state(sock) != _TCP_ESTABLISHED:
            return True
        time.sleep(0.05)
    return tcp_state(sock) != _TCP_ESTABLISHED


def statuses_in(data: bytes) -> list[int]:
    """The statuses of the Content-Length-framed responses in `data`, in order."""
    statuses = []
    while data:
        resp = parse_response(data)
        statuses.append(resp.status)
        head = data.index(b"\r\n\r\n") + 4
        data = data[head + (resp.content_length or 0):]
    return statuses


def write_without_reading(sock: socket.socket, request: bytes, total: int, stall: float = 2.0) -> int:
    """Pipeline copies of `request` until `total` bytes are sent, the router stops taking them for
    `stall` seconds, or it cuts the connection. Returns the bytes sent."""
    batch = request * max(1, 65536 // len(request))
    sock.settimeout(stall)
    sent = 0
    while sent < total:
        try:
            sock.sendall(batch)
        except (TimeoutError, BrokenPipeError, ConnectionResetError):
            break
        sent += len(batch)
    return sent


def test_partial_head_pipelined_behind_a_request_gets_the_header_deadline(router: tuple[Address, int]) -> None:
    addr, _ = router
    with connect(addr) as sock:
        sock.sendall(b"GET /api/a HTTP/1.1\r\n" + H + b"\r\nGET /api/b HTTP/1.1\r\nX-A: ")
        assert read_response(sock).status == 200
        rest, closed = read_until_close(sock, timeout=6.0)
    assert closed, "a partial second head stayed open 6s past a 1s header_timeout"
    assert rest == b"" or rest.startswith(b"HTTP/1.1 408 "), rest[:200]


def test_malformed_pipelined_request_does_not_drop_the_valid_ones_before_it(router: tuple[Address, int]) -> None:
    addr, _ = router
    post = b"POST /api/p HTTP/1.1\r\n" + H + b"Content-Length: 2\r\n\r\n{}"
    with connect(addr) as sock:
        sock.sendall(post + post + b"GET /api/bad HTTP/1.1\r\n" + H + b"Bad Header\r\n\r\n")
        data, closed = read_until_close(sock)
    assert statuses_in(data) == [200, 200, 400], data
    assert closed


def test_nothing_after_a_request_that_closes_the_connection_is_answered(router: tuple[Address, int]) -> None:
    """A request with Connection: close is the last: one sent behind it, in the same read or its
    own (the fast reader or llhttp, whichever reads it), gets no answer, and the connection closes."""
    addr, _ = router
    last = b"POST /api/p HTTP/1.1\r\n" + H + b"Connection: close\r\nContent-Length: 2\r\n\r\n{}"
    behind = b"POST /api/q HTTP/1.1\r\n" + H + b"Content-Length: 2\r\n\r\n{}"
    for sends in ([last + behind], [last, behind]):
        with connect(addr) as sock:
            for data in sends:
                sock.sendall(data)
            answer, closed = read_until_close(sock)
        assert statuses_in(answer) == [200], (sends, answer)
        assert closed


@pytest.mark.parametrize("path", ["/nowhere", "/api/proxied"], ids=["answered-by-router", "proxied"])
def test_pipelining_client_that_never_reads_keeps_memory_flat(router: tuple[Address, int], path: str) -> None:
    addr, pid = router
    request = b"GET " + path.encode() + b" HTTP/1.1\r\n" + H + b"\r\n"
    baseline = rss_kib(pid)
    peak = [baseline]
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], rss_kib(pid))
            time.sleep(0.02)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        with connect(addr) as sock:
            sent = write_without_reading(sock, request, total=30 << 20)
    finally:
        done.set()
        watcher.join()
    growth_mib = (peak[0] - baseline) / 1024
    assert growth_mib < 40, f"router RSS grew by {growth_mib:.0f} MiB for {sent >> 20} MiB of unread pipelining"


@pytest.mark.parametrize("path", ["/nowhere", "/api/proxied"], ids=["answered-by-router", "proxied"])
def test_pipelining_client_that_never_reads_is_cut_after_idle_timeout(router: tuple[Address, int], path: str) -> None:
    addr, _ = router
    # Long targets make long answers (both echo the path), so the kernel's socket buffers, which
    # take answers before the router's own buffer does, fill within a fraction of a second.
    request = b"GET " + path.encode() + b"/" + b"x" * 4000 + b" HTTP/1.1\r\n" + H + b"\r\n"
    with connect(addr) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        write_without_reading(sock, request, total=8 << 20, stall=0.5)
        assert peer_closed_within(sock, timeout=15.0), \
            "a client that stopped reading was still connected 15s after a 1s idle_timeout"
