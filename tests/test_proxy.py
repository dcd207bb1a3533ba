"""Router core: forwarding, headers, errors and streaming, through a real router process."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
from aiohttp import web
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.helpers import BackendFactory, RouterFactory, base_config, free_port, raw_request


def route(name: str, backend: str, **match: object) -> dict[str, object]:
    return {"name": name, "match": match or {"path_prefix": "/"}, "primary": backend}


async def test_body_passes_byte_for_byte_both_ways(make_router: RouterFactory, make_backend: BackendFactory, tmp_path: Path) -> None:
    payload = os.urandom(50_000)

    async def echo(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        return web.Response(body=body[::-1], content_type="application/octet-stream",
                            headers={"X-Body-Sha": hashlib.sha256(body).hexdigest()})

    b = await make_backend("b1", echo)
    r = await make_router(base_config(tmp_path, {"b1": b.url}, [route("m", "b1")]))
    async with aiohttp.ClientSession() as s, s.post(r.url + "/v1/models/m:predict?x=1", data=payload) as resp:
        assert resp.status == 200
        assert await resp.read() == payload[::-1]
        assert resp.headers["X-Body-Sha"] == hashlib.sha256(payload).hexdigest()
        assert resp.headers["X-Model-Backend"] == "b1"
    assert b.seen[0]["path"] == "/v1/models/m:predict?x=1"


async def test_forwarding_headers_and_hop_by_hop(make_router: RouterFactory, make_backend: BackendFactory, tmp_path: Path) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(text="ok", headers={"Connection": "X-Secret", "X-Secret": "hidden",
                                                "Keep-Alive": "timeout=5", "X-Kept": "yes"})

    b = await make_backend("b1", handler)
    r = await make_router(base_config(tmp_path, {"b1": b.url}, [route("m", "b1")]))
    headers = {"Connection": "keep-alive, X-Drop-Me", "X-Drop-Me": "1", "Keep-Alive": "300", "TE": "trailers",
               "X-Forwarded-For": "10.0.0.1", "X-Request-Id": "abc-123", "Via": "1.0 edge", "X-Custom": "kept"}
    async with aiohttp.ClientSession() as s, s.get(r.url + "/a", headers=headers) as resp:
        assert resp.status == 200
        assert "X-Secret" not in resp.headers and "Keep-Alive" not in resp.headers
        assert resp.headers["X-Kept"] == "yes"
        assert resp.headers["X-Request-Id"] == "abc-123"
    seen = b.seen[0]["headers"]
    assert "x-drop-me" not in seen and "te" not in seen and "keep-alive" not in seen
    assert seen["x-custom"] == "kept"
    assert seen["x-forwarded-for"] == "10.0.0.1, 127.0.0.1"
    assert seen["x-forwarded-proto"] == "http"
    assert seen["x-forwarded-host"] == r.config["listen"]
    assert seen["via"] == "1.0 edge, 1.1 model-router"
    assert seen["x-request-id"] == "abc-123"


async def test_request_id_generated_when_missing_or_malformed(make_router: RouterFactory, make_backend: BackendFactory, tmp_path: Path) -> None:
    b = await make_backend("b1")
    r = await make_router(base_config(tmp_path, {"b1": b.url}, [route("m", "b1")]))
    async with aiohttp.ClientSession() as s:
        async with s.get(r.url + "/a", headers={"X-Request-Id": "bad id with spaces"}) as resp:
            rid = resp.headers["X-Request-Id"]
        async with s.get(r.url + "/a") as resp:
            rid2 = resp.headers["X-Request-Id"]
    assert rid != "bad id with spaces" and len(rid) == 32 and rid2 != rid
    assert b.seen[0]["headers"]["x-request-id"] == rid


async def test_backend_header_can_be_turned_off(make_router: RouterFactory, make_backend: BackendFactory, tmp_path: Path) -> None:
    b = await make_backend("b1")
    cfg = base_config(tmp_path, {"b1": b.url}, [route("m", "b1")], proxy={"backend_header": False})
    r = await make_router(cfg)
    async with aiohttp.ClientSession() as s, s.get(r.url + "/a") as resp:
        assert resp.status == 200 and "X-Model-Backend" not in resp.headers


async def test_route_order_and_match_kinds(make_router: RouterFactory, make_backend: BackendFactory, tmp_path: Path) -> None:
    bs = {n: await make_backend(n) for n in ("exact", "regex", "method", "header", "prefix", "catch")}
    routes = [
        route("exact", "exact", path="/v1/models/a:predict"),
        route("regex", "regex", path_regex=r"^/v2/models/[a-z]+/infer$"),
        {"name": "method", "match": {"path_prefix": "/v1/models/a", "methods": ["GET"]}, "primary": "method"},
        {"name": "header", "match": {"path_prefix": "/v1/", "headers": {"X-Tenant": "t1"}}, "primary": "header"},
        route("prefix", "prefix", path_prefix="/v1/"),
        route("catch", "catch", path_prefix="/v1/models/a"),  # shadowed by "prefix": first match wins
    ]
    r = await make_router(base_config(tmp_path, {n: b.url for n, b in bs.items()}, routes))
    cases = [("POST", "/v1/models/a:predict", {}, "exact"), ("POST", "/v2/models/abc/infer", {}, "regex"),
             ("GET", "/v1/models/a/metadata", {}, "method"), ("POST", "/v1/x", {"X-Tenant": "t1"}, "header"),
             ("POST", "/v1/models/a/other", {}, "prefix")]
    async with aiohttp.ClientSession() as s:
        for method, path, headers, expected in cases:
            async with s.request(method, r.url + path, headers=headers) as resp:
                assert resp.headers.get("X-Model-Backend") == expected, (method, path)
        async with s.post(r.url + "/v2/models/ABC/infer") as resp:
            assert resp.status == 404
            body = await resp.json()
            # An Open Inference path: the protocol's error shape, a string (tritonclient reads it)
            assert "/v2/models/ABC/infer" in body["error"] and resp.headers["X-Request-Id"]
        async with s.post(r.url + "/nowhere") as resp:
            body = await resp.json()
            assert body["error"]["status"] == 404 and "/nowhere" in body["error"]["message"]
    assert not bs["catch"].seen


async def test_unreachable_backend_is_502_and_slow_is_504(make_router: RouterFactory, make_backend: BackendFactory, tmp_path: Path) -> None:
    release = asyncio.Event()  # set when the test is done, so the backend's teardown need not wait

    async def slow(request: web.Request) -> web.StreamResponse:
        await release.wait()
        return web.Response(text="late")

    b = await make_backend("slow", slow)
    cfg = base_config(tmp_path, {"dead": f"http://127.0.0.1:{free_port()}", "slow": b.url},
                      [route("dead", "dead", path_prefix="/dead"),
                       {**route("slow", "slow", path_prefix="/slow"), "timeout": "300ms"}])
    r = await make_router(cfg)
    async with aiohttp.ClientSession() as s:
        async with s.get(r.url + "/dead") as resp:
            assert resp.status == 502
            body = await resp.json()
            assert "cannot connect" in body["error"]["message"] and body["error"]["request_id"]
        try:
            async with s.get(r.url + "/slow") as resp:
                assert resp.status == 504
                assert "did not answer within 0.3s" in (await resp.json())["error"]["message"]
        finally:
            release.set()
        async with s.get(r.url + "/dead") as resp:  # the router is still serving
            assert resp.status == 502


async def test_body_over_max_body_is_413_also_when_chunked(make_router: RouterFactory, make_backend: BackendFactory, tmp_path: Path) -> None:
    b = await make_backend("b1")
    r = await make_router(base_config(tmp_path, {"b1": b.url}, [route("m", "b1")]))
    host, port = r.host_port
    big = b"x" * (64 * 1024 + 1)
    raw = await raw_request(host, port, b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(big))
    assert raw.startswith(b"HTTP/1.1 413 ") and b"max_body" in raw
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in (big[:40000], big[40000:])) + b"0\r\n\r\n"
    raw = await raw_request(host, port, b"POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked)
    assert raw.startswith(b"HTTP/1.1 413 ")
    assert not b.seen
    async with aiohttp.ClientSession() as s, s.post(r.url + "/a", data=b"y" * 1000) as resp:
        assert resp.status == 200 and (await resp.json())["body_len"] == 1000


async def test_chunked_request_forwarded_with_length(make_router: RouterFactory, make_backend: BackendFactory, tmp_path: Path) -> None:
    b = await make_backend("b1")
    r = await make_router(base_config(tmp_path, {"b1": b.url}, [route("m", "b1")]))
    host, port = r.host_port
    raw = await raw_request(host, port, b"POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                            b"Connection: close\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
    assert raw.startswith(b"HTTP/1.1 200 ")
    assert b.seen[0]["body"] == b"hello world"
    assert b.seen[0]["headers"]["content-length"] == "11"
    assert "transfer-encoding" not in b.seen[0]["headers"]


async def test_streamed_response_is_relayed_as_it_arrives(make_router: RouterFactory, make_backend: BackendFactory, tmp_path: Path) -> None:
    release = asyncio.Event()

    async def sse(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(b"data: first\n\n")
        await release.wait()  # the rest only after the client has seen the first piece
        await resp.write(b"data: second\n\n")
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    b = await make_backend("llm", sse)
    r = await make_router(base_config(tmp_path, {"llm": b.url}, [route("m", "llm")]))
    async with aiohttp.ClientSession() as s, s.post(r.url + "/v1/chat/completions", json={"stream": True}) as resp:
        assert resp.headers["Transfer-Encoding"] == "chunked"
        first = await asyncio.wait_for(resp.content.readuntil(b"\n\n"), 5)
        assert first == b"data: first\n\n"
        release.set()
        rest = await resp.read()
    assert rest == b"data: second\n\ndata: [DONE]\n\n"


@contextlib.asynccontextmanager
async def raw_backend(*pieces: bytes) -> AsyncIterator[str]:
    """A backend that answers each request with `pieces` (written apart), then closes."""
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        for i, piece in enumerate(pieces):
            if i:
                await asyncio.sleep(0.05)
            writer.write(piece)
            await writer.drain()
        writer.close()

    port = free_port()
    async with await asyncio.start_server(serve, "127.0.0.1", port):
        yield f"http://127.0.0.1:{port}"


async def test_response_without_length_is_relayed_until_close(make_router: RouterFactory, tmp_path: Path) -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\npart1,"
    async with raw_backend(head, b"part2") as url:
        r = await make_router(base_config(tmp_path, {"raw": url}, [route("m", "raw")]))
        async with aiohttp.ClientSession() as s, s.get(r.url + "/x") as resp:
            assert resp.status == 200 and await resp.read() == b"part1,part2"
        host, rport = r.host_port
        raw10 = await raw_request(host, rport, b"GET /x HTTP/1.0\r\n\r\n")
        assert raw10.startswith(b"HTTP/1.1 200") and raw10.endswith(b"part1,part2")
        assert b"Transfer-Encoding" not in raw10 and b"Connection: close" in raw10


async def test_malformed_backend_response_is_502(make_router: RouterFactory, tmp_path: Path) -> None:
    async with raw_backend(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!") as url:
        r = await make_router(base_config(tmp_path, {"raw": url}, [route("m", "raw")]))
        async with aiohttp.ClientSession() as s, s.get(r.url + "/x") as resp:
            assert resp.status == 502
            assert "malformed response" in (await resp.json())["error"]["message"]


async def test_backend_closing_mid_body_closes_client(make_router: RouterFactory, tmp_path: Path) -> None:
    async with raw_backend(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly-part") as url:
        r = await make_router(base_config(tmp_path, {"raw": url}, [route("m", "raw")]))
        host, rport = r.host_port
        raw = await raw_request(host, rport, b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n")
        head, _, body = raw.partition(b"\r\n\r\n")
        assert b"Content-Length: 100" in head and body == b"only-part"  # cut short, connection closed


async def test_keep_alive_and_pipelining_in_order(make_router: RouterFactory, make_backend: BackendFactory, tmp_path: Path) -> None:
    async def slow_first(request: web.Request) -> web.StreamResponse:
        if request.path == "/first":
            await asyncio.sleep(0.2)
        return web.Response(text=request.path)

    b = await make_backend("b1", slow_first)
    r = await make_router(base_config(tmp_path, {"b1": b.url}, [route("m", "b1")]))
    host, port = r.host_port
    raw = await raw_request(host, port, b"GET /first HTTP/1.1\r\nHost: x\r\n\r\nGET /second HTTP/1.1\r\nHost: x\r\n\r\n"
                            b"GET /third HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert raw.count(b"HTTP/1.1 200 OK") == 3
    assert raw.index(b"/first") < raw.index(b"/second") < raw.index(b"/third")


async def test_slow_backend_does_not_starve_others(make_router: RouterFactory, make_backend: BackendFactory, tmp_path: Path) -> None:
    hang = asyncio.Event()

    async def hung(request: web.Request) -> web.StreamResponse:
        await hang.wait()
        return web.Response(text="late")

    slow = await make_backend("slow", hung)
    fast = await make_backend("fast")
    cfg = base_config(tmp_path, {"slow": slow.url, "fast": fast.url},
                      [{**route("slow", "slow", path_prefix="/slow"), "timeout": "3s"},
                       route("fast", "fast", path_prefix="/fast")])
    cfg["backends"]["slow"]["max_connections"] = 4
    r = await make_router(cfg)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as s:
        stuck = [asyncio.create_task(s.get(r.url + "/slow")) for _ in range(12)]
        await asyncio.sleep(0.3)
        for _ in range(20):
            async with s.get(r.url + "/fast") as resp:
                assert resp.status == 200
        hang.set()
        results = await asyncio.gather(*stuck)
        assert {resp.status for resp in results} <= {200, 503}
        for resp in results:
            resp.release()


async def test_head_and_no_content_responses_have_no_body(make_router: RouterFactory, make_backend: BackendFactory, tmp_path: Path) -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        if request.path == "/empty":
            return web.Response(status=204)
        return web.Response(body=b"x" * 1234, content_type="application/octet-stream")

    b = await make_backend("b1", handler)
    r = await make_router(base_config(tmp_path, {"b1": b.url}, [route("m", "b1")]))
    host, port = r.host_port
    raw = await raw_request(host, port, b"HEAD /h HTTP/1.1\r\nHost: x\r\n\r\nGET /empty HTTP/1.1\r\nHost: x\r\n\r\n"
                            b"GET /h HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    first, rest = raw.split(b"\r\n\r\n", 1)
    assert first.startswith(b"HTTP/1.1 200") and b"Content-Length: 1234" in first
    assert rest.startswith(b"HTTP/1.1 204")  # the HEAD answer carried no body: the next response follows at once
    second, third = rest.split(b"\r\n\r\n", 1)
    assert b"Content-Length" not in second and b"Transfer-Encoding" not in second
    assert third.startswith(b"HTTP/1.1 200") and third.endswith(b"x" * 1234)


def test_forwarded_request_says_its_body_length_at_every_size() -> None:
    """The backend's Content-Length comes from a table of lines for small bodies and is formatted
    for larger ones: both say the body's exact size, on either side of the table's end."""
    from router.dataplane import proxy
    from router.dataplane.request import Request

    for size in (0, 1, proxy._LENGTH_LINES_MAX - 1, proxy._LENGTH_LINES_MAX, 70_000):
        body = b"x" * size
        req = Request(b"POST", b"/p", b"1.1", [(b"host", b"Host", b"h")], {b"host": b"h"}, body, True, "10.0.0.1", 0.0)
        sent = proxy.upstream_request(req, b"backend:80", b"1.1 router")
        head, _, rest = sent.partition(b"\r\n\r\n")
        assert rest == body
        assert head.split(b"\r\n").count(b"Content-Length: %d" % size) == 1, (size, head)


@contextlib.asynccontextmanager
async def kept_backend(answer: Callable[[bytes], bytes]) -> AsyncIterator[tuple[str, list[asyncio.StreamWriter]]]:
    """A keep-alive backend answering each request head with `answer(head)`; yields its URL and
    its connections' writers, and closes them on exit (the router keeps its connections open, so
    no handler may outlive the test)."""
    writers: list[asyncio.StreamWriter] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        try:
            with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
                while True:
                    writer.write(answer(await reader.readuntil(b"\r\n\r\n")))
                    await writer.drain()
        finally:
            writer.close()

    port = free_port()
    async with await asyncio.start_server(serve, "127.0.0.1", port):
        try:
            yield f"http://127.0.0.1:{port}", writers
        finally:
            for w in writers:
                w.close()
            await asyncio.gather(*(w.wait_closed() for w in writers), return_exceptions=True)


_HEADER_CHOICES = [(b"host", b"Host", b"h"), (b"host", b"Host", b"other"), (b"x-a", b"X-A", b"1"), (b"x-a", b"X-A", b"2"),
                   (b"connection", b"Connection", b"x-a"), (b"x-forwarded-for", b"X-Forwarded-For", b"10.9.9.9"),
                   (b"via", b"Via", b"1.1 edge"), (b"content-type", b"Content-Type", b"application/json")]


@settings(max_examples=300, deadline=None)
@given(steps=st.lists(st.tuples(st.lists(st.sampled_from(_HEADER_CHOICES), max_size=5), st.sampled_from([0, 1]),
                                st.sampled_from([0, 1]), st.sampled_from([b"", b"{}"])), min_size=1, max_size=8))
def test_a_connections_remembered_header_block_forwards_what_building_it_afresh_would(
        steps: list[tuple[list[tuple[bytes, bytes, bytes]], int, int, bytes]]) -> None:
    """The forwarded header block is reused while a connection's requests carry equal headers to
    the same backend and Via: whatever the sequence of requests, every forwarded byte is what the
    request alone would give."""
    from router.dataplane import proxy
    from router.dataplane.request import ForwardMemo, Request

    memo = ForwardMemo()
    authorities, vias = [b"backend:80", b"other:81"], [b"1.1 router", b"1.1 renamed"]
    for headers, a, v, body in steps:
        index: dict[bytes, bytes] = {}
        for lname, _, value in headers:
            index[lname] = index[lname] + b", " + value if lname in index else value
        with_memo, without = (Request(b"POST", b"/p", b"1.1", list(headers), dict(index), body, True, "10.0.0.1",
                                      0.0, m) for m in (memo, None))
        with_memo.request_id = without.request_id = b"rid"
        remembered = proxy.upstream_request(with_memo, authorities[a], vias[v])
        assert remembered == proxy.upstream_request(without, authorities[a], vias[v])
        assert memo.headers == headers  # the next request compares against this one's


async def test_each_response_on_a_kept_connection_is_relayed_with_its_own_head(make_router: RouterFactory,
                                                                                tmp_path: Path) -> None:
    """A connection's response heads are remembered (the next one with equal header fields reuses
    what the last made); responses that differ from the one before in a value, the status, the
    hop-by-hop names or framing each reach the client as sent."""
    script = [
        (b"200 OK", b"X-A: 1\r\nContent-Type: application/json\r\nContent-Length: 2\r\n", b"{}"),
        (b"200 OK", b"X-A: 1\r\nContent-Type: application/json\r\nContent-Length: 2\r\n", b"{}"),
        (b"200 OK", b"X-A: 2\r\nContent-Type: application/json\r\nContent-Length: 2\r\n", b"[]"),
        (b"201 Created", b"X-A: 2\r\nContent-Type: application/json\r\nContent-Length: 2\r\n", b"[]"),
        (b"200 OK", b"Connection: x-a\r\nX-A: 3\r\nContent-Length: 3\r\n", b"abc"),
        (b"200 OK", b"X-A: 2\r\nContent-Type: application/json\r\nContent-Length: 2\r\n", b"[]"),
        (b"200 OK", b"X-A: 2\r\nTransfer-Encoding: chunked\r\n", b"2\r\nhi\r\n0\r\n\r\n"),
        (b"200 OK", b"X-A: 2\r\nContent-Type: application/json\r\nContent-Length: 2\r\n", b"[]"),
    ]
    def answer(head: bytes) -> bytes:
        status, fields, body = script[int(head.split(b" ", 2)[1].rsplit(b"/", 1)[1])]
        return b"HTTP/1.1 " + status + b"\r\n" + fields + b"\r\n" + body

    async with kept_backend(answer) as (url, writers):
        r = await make_router(base_config(tmp_path, {"raw": url}, [route("m", "raw")]))
        async with aiohttp.ClientSession() as s:
            for n, (status, fields, body) in enumerate(script):
                async with s.get(f"{r.url}/r/{n}") as resp:
                    sent = dict(line.split(b": ", 1) for line in fields.split(b"\r\n") if line)
                    assert resp.status == int(status.split()[0]), n
                    expected_a = None if b"Connection" in sent else sent[b"X-A"].decode()
                    assert resp.headers.get("X-A") == expected_a, n
                    expected_type = sent[b"Content-Type"].decode() if b"Content-Type" in sent else None
                    assert resp.headers.get("Content-Type") == expected_type, n
                    assert "Connection" not in resp.headers, n
                    assert await resp.read() == (b"hi" if b"Transfer-Encoding" in sent else body), n
        assert len(writers) == 1, "the router should have kept one connection to the backend for all of them"


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:"))
    return int(head.split(b" ", 2)[1]), await asyncio.wait_for(reader.readexactly(length), 5)


async def test_each_request_on_a_kept_connection_is_read_with_its_own_headers(make_router: RouterFactory,
                                                                               tmp_path: Path) -> None:
    """A connection's request headers are remembered (the next request with equal header fields
    takes what reading the last made); requests that differ from the one before are read as sent,
    and the head-size limit still counts the new request's target with the remembered fields."""
    pad = b"X-Pad: " + b"p" * 600 + b"\r\n"
    async with kept_backend(lambda head: b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(head) + head) \
            as (url, _):
        cfg = base_config(tmp_path, {"echo": url}, [route("m", "echo")])
        cfg["limits"]["max_header_size"] = "1KiB"
        r = await make_router(cfg)
        host, rport = r.host_port
        reader, writer = await asyncio.open_connection(host, rport)
        try:
            for n, fields in enumerate([b"X-A: 1\r\n", b"X-A: 1\r\n", b"X-A: 2\r\n", b"X-A: 2\r\nX-B: 3\r\n",
                                        b"X-A: 2\r\nX-B: 3\r\n", b"X-A: 1\r\n"]):
                writer.write(b"GET /r/%d HTTP/1.1\r\nHost: h\r\n" % n + pad + fields + b"\r\n")
                status, echoed = await _read_response(reader)
                assert status == 200, (n, echoed)
                assert echoed.startswith(b"GET /r/%d HTTP/1.1\r\n" % n), n
                forwarded = [line for line in echoed.split(b"\r\n") if line.startswith((b"X-A:", b"X-B:"))]
                assert forwarded == [line for line in fields.split(b"\r\n") if line], n
            # the same fields as the last request, behind a target that takes the head over 1 KiB
            writer.write(b"GET /r/" + b"x" * 500 + b" HTTP/1.1\r\nHost: h\r\n" + pad + b"X-A: 1\r\n\r\n")
            status, _ = await _read_response(reader)
            assert status == 431
        finally:
            writer.close()
            await asyncio.gather(writer.wait_closed(), return_exceptions=True)
