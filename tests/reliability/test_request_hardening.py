"""What a client sends cannot forge what the router owns: one answer per request (upgrades,
CONNECT), trailers never become headers, no forged shadow marker, loop detection by exact name,
only the chunked transfer coding, and request ids that cannot be guessed.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers import base_config
from tests.reliability.netkit import (
    Address,
    H11Backend,
    Seen,
    ThreadLoop,
    get,
    parse_response,
    request_once,
    router_in_thread,
    send_and_read,
    wait_until,
)

H = b"Host: model.example\r\n"


@dataclass
class Setup:
    addr: Address
    primary: H11Backend
    v2: H11Backend
    shadow: H11Backend


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    tmp: Path = tmp_path_factory.mktemp("requests")
    tl = ThreadLoop()
    primary, v2, shadow = H11Backend(tl).start(), H11Backend(tl).start(), H11Backend(tl).start()
    routes = [
        {"name": "ov", "match": {"path_prefix": "/ov"}, "primary": "b",
         "overrides": [{"match": {"headers": {"X-Model-Version": "v2"}}, "backend": "v2"}]},
        {"name": "sh", "match": {"path_prefix": "/sh"}, "primary": "b", "shadow": {"backend": "s"}},
        {"name": "all", "match": {"path_prefix": "/"}, "primary": "b"},
    ]
    cfg = base_config(tmp, {"b": primary.url, "v2": v2.url, "s": shadow.url}, routes)
    cfg["proxy"] = {"trusted_hops": 1}
    try:
        with router_in_thread(tl, tmp, cfg) as rp:
            yield Setup(rp.host_port, primary, v2, shadow)
    finally:
        for b in (primary, v2, shadow):
            b.stop()
        tl.close()


_sentinels = itertools.count()


def forwarded_since(setup: Setup, before: int) -> list[Seen]:
    """What reached the primary since `before`, up to a sentinel request sent now (not included)."""
    path = f"/sentinel/{next(_sentinels)}"
    assert request_once(setup.addr, get(setup.addr, path)).status == 200
    seen = setup.primary.snapshot()[before:]
    assert seen and seen[-1].target == path.encode()
    return seen[:-1]


def header(seen: Seen, name: bytes) -> list[bytes]:
    return [v for n, v in seen.headers if n == name]


def one_answer(data: bytes) -> int:
    """The status of the only response in `data` (more than one response fails)."""
    resp = parse_response(data)
    end = data.index(b"\r\n\r\n") + 4 + (resp.content_length or 0)
    assert resp.content_length is not None and data[end:] == b"", data[:600]
    return resp.status


UPGRADES = {
    "websocket": b"GET /ws HTTP/1.1\r\n" + H + b"Connection: Upgrade\r\nUpgrade: websocket\r\n"
                 b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    "connect": b"CONNECT /path HTTP/1.1\r\n" + H + b"\r\n",
}


@pytest.mark.parametrize("raw", UPGRADES.values(), ids=UPGRADES.keys())
def test_protocol_switch_gets_one_501_closes_and_never_reaches_a_backend(setup: Setup, raw: bytes) -> None:
    before = len(setup.primary.snapshot())
    data, closed = send_and_read(setup.addr, raw + get(setup.addr, "/after"))
    assert one_answer(data) == 501
    assert closed
    assert forwarded_since(setup, before) == []


def test_h2c_upgrade_is_answered_once_in_http11_then_closed(setup: Setup) -> None:
    before = len(setup.primary.snapshot())
    raw = b"GET /h2c HTTP/1.1\r\n" + H + b"Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n" \
          b"HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n"
    data, closed = send_and_read(setup.addr, raw)
    assert one_answer(data) == 200
    assert b"connection: close" in data.lower()
    assert closed
    [seen] = forwarded_since(setup, before)
    assert header(seen, b"upgrade") == [] and header(seen, b"http2-settings") == []


def chunked_with_trailer(path: bytes, trailer: bytes) -> bytes:
    return (b"POST " + path + b" HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n"
            b"2\r\n{}\r\n0\r\n" + trailer + b"\r\n\r\n")


def test_request_trailer_does_not_fire_an_override(setup: Setup) -> None:
    before = len(setup.v2.snapshot())
    resp = request_once(setup.addr, chunked_with_trailer(b"/ov/x", b"X-Model-Version: v2"))
    assert resp.status == 200
    assert setup.v2.snapshot()[before:] == [], "a trailer chose the backend"


def test_request_trailer_never_reaches_the_backend_as_a_header(setup: Setup) -> None:
    before = len(setup.primary.snapshot())
    assert request_once(setup.addr, chunked_with_trailer(b"/t", b"X-Trailer-Probe: yes")).status == 200
    [seen] = forwarded_since(setup, before)
    assert header(seen, b"x-trailer-probe") == []
    assert seen.body == b"{}"


def test_forwarded_for_trailer_is_not_believed(setup: Setup) -> None:
    before = len(setup.primary.snapshot())
    assert request_once(setup.addr, chunked_with_trailer(b"/t", b"X-Forwarded-For: 6.6.6.6")).status == 200
    [seen] = forwarded_since(setup, before)
    assert header(seen, b"x-forwarded-for") == [b"127.0.0.1"]


def test_forged_shadow_marker_is_stripped_from_live_and_mirrored_requests(setup: Setup) -> None:
    before_live, before_shadow = len(setup.primary.snapshot()), len(setup.shadow.snapshot())
    raw = b"POST /sh/x HTTP/1.1\r\n" + H + b"X-Shadow-Request: 1\r\nContent-Length: 2\r\n\r\n{}"
    assert request_once(setup.addr, raw).status == 200
    assert wait_until(lambda: len(setup.shadow.snapshot()) > before_shadow), "the request was not mirrored"
    [live] = forwarded_since(setup, before_live)
    [mirrored] = setup.shadow.snapshot()[before_shadow:]
    assert header(live, b"x-shadow-request") == []
    assert header(mirrored, b"x-shadow-request") == [b"1"]


@pytest.mark.parametrize("via", [b"1.1 model-router-edge", b"1.1 model-router2", b"1.0 edge (model-router)"])
def test_via_naming_another_proxy_is_not_a_loop(setup: Setup, via: bytes) -> None:
    assert request_once(setup.addr, get(setup.addr, "/v", b"Via: " + via + b"\r\n")).status == 200


def test_via_with_our_own_name_among_others_is_a_loop(setup: Setup) -> None:
    resp = request_once(setup.addr, get(setup.addr, "/v", b"Via: 1.1 edge, 1.1 model-router\r\n"))
    assert resp.status == 508


def test_transfer_coding_other_than_chunked_gets_501_and_is_never_forwarded(setup: Setup) -> None:
    before = len(setup.primary.snapshot())
    raw = b"POST /te HTTP/1.1\r\n" + H + b"Transfer-Encoding: gzip, chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n"
    data, closed = send_and_read(setup.addr, raw)
    assert one_answer(data) == 501
    assert closed
    assert forwarded_since(setup, before) == []


def test_generated_request_ids_are_unguessable(setup: Setup) -> None:
    ids = [request_once(setup.addr, get(setup.addr, "/id")).headers["x-request-id"] for _ in range(20)]
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids), ids  # 128 bits
    prefixes = {i[:8] for i in ids}
    assert len(prefixes) == len(ids), f"ids share a predictable part: {ids}"
