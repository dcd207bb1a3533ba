"""The fastest backend we can write in Python, so that in a benchmark the proxy is the bottleneck.

    python -m backends.fast_server --port 9100 [--latency-ms 200]

A bare asyncio Protocol (on uvloop when installed) parses requests with llhttp and answers
every one, whatever its method or path, with the same small KServe-style JSON body.
It keeps connections alive, answers pipelined requests in order, skips request bodies of
any size (Content-Length or chunked) without buffering them, honours `Connection: close`,
and answers a malformed request with 400 before closing. `--latency-ms` delays each
answer with a timer, which makes it the slow shadow of the bench.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections import deque
from collections.abc import Callable, Sequence

import httptools

BODY = b'{"predictions":[{"label":"legit","scores":[0.9,0.07,0.03]}]}'
BAD_BODY = b'{"error":"malformed request"}'


def _response(status: bytes, body: bytes, keep_alive: bool, head: bool = False) -> bytes:
    connection = b"keep-alive" if keep_alive else b"close"
    return (b"HTTP/1.1 " + status + b"\r\nContent-Type: application/json\r\nContent-Length: "
            + str(len(body)).encode() + b"\r\nConnection: " + connection + b"\r\n\r\n" + (b"" if head else body))


# Every answer is one of these, built once: the hot path only picks one.
_ANSWERS = {(keep_alive, head): _response(b"200 OK", BODY, keep_alive, head)
            for keep_alive in (True, False) for head in (True, False)}
_BAD_REQUEST = _response(b"400 Bad Request", BAD_BODY, keep_alive=False)
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


class _Answer:
    """One response waiting its turn; `ready` turns true when its delay is over."""

    __slots__ = ("data", "ready", "timer")

    def __init__(self, data: bytes, ready: bool) -> None:
        self.data = data
        self.ready = ready
        self.timer: asyncio.TimerHandle | None = None


class FastProtocol(asyncio.Protocol):
    """One client connection. Answers leave in request order, even when they are delayed."""

    def __init__(self, latency_s: float, connections: set[FastProtocol]) -> None:
        self.latency_s = latency_s
        self.connections = connections
        self.loop = asyncio.get_running_loop()  # the factory runs inside the loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.queue: deque[_Answer] = deque()
        self.closing = False  # no more requests are read; close once the queue is sent
        self.keep_alive = True
        self.head = False

    # -- asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.connections.add(self)

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self.closing = True  # the request was answered; we speak nothing but HTTP/1.1
        except httptools.HttpParserError:
            # After a `Connection: close` request llhttp rejects any further bytes: not our 400.
            if not self.closing:
                self.queue.append(_Answer(_BAD_REQUEST, ready=True))
            self.closing = True
        self._flush()

    def eof_received(self) -> bool:
        # Keep the write side open until the answers already owed have gone out.
        self.closing = True
        self._flush()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.connections.discard(self)
        for answer in self.queue:
            if answer.timer is not None:
                answer.timer.cancel()
        self.queue.clear()
        self.transport = None

    def pause_writing(self) -> None:
        # A client that pipelines but does not read gets no more reads from us either.
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.transport is not None:
            self.transport.resume_reading()

    # -- httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        if len(name) == 6 and name.lower() == b"expect" and value.lower() == b"100-continue":
            self._flush()
            # Only when nothing is owed: an interim answer must not overtake earlier ones.
            if not self.queue and self.transport is not None:
                self.transport.write(_CONTINUE)

    def on_headers_complete(self) -> None:
        self.keep_alive = self.parser.should_keep_alive() and not self.parser.should_upgrade()
        self.head = self.parser.get_method() == b"HEAD"

    def on_message_complete(self) -> None:
        if self.closing:
            return  # a request after `Connection: close` (or after an upgrade) gets no answer
        answer = _Answer(_ANSWERS[self.keep_alive, self.head], ready=not self.latency_s)
        self.queue.append(answer)
        if self.latency_s:
            answer.timer = self.loop.call_later(self.latency_s, self._release, answer)
        if not self.keep_alive:
            self.closing = True

    # -- answering
    def _release(self, answer: _Answer) -> None:
        answer.ready, answer.timer = True, None
        self._flush()

    def _flush(self) -> None:
        transport = self.transport
        if transport is None:
            return
        out = []
        while self.queue and self.queue[0].ready:
            out.append(self.queue.popleft().data)
        if out:
            transport.write(b"".join(out))
        if self.closing and not self.queue:
            transport.close()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


async def start(host: str, port: int, latency_ms: float = 0.0) -> tuple[asyncio.Server, set[FastProtocol]]:
    """Listen on host:port; the set holds the open connections, for an orderly shutdown."""
    connections: set[FastProtocol] = set()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: FastProtocol(latency_ms / 1000, connections),
                                      host, port, reuse_address=True, backlog=1024)
    return server, connections


async def stop(server: asyncio.Server, connections: set[FastProtocol]) -> None:
    server.close()
    for connection in list(connections):
        connection.close()
    await server.wait_closed()


async def serve(host: str, port: int, latency_ms: float) -> None:
    server, connections = await start(host, port, latency_ms)
    bound = server.sockets[0].getsockname()[1]
    print(f"fast_server listening on http://{host}:{bound}", flush=True)
    done = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, done.set)  # the handler only notes the signal
    try:
        await done.wait()
    finally:
        await stop(server, connections)


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m backends.fast_server", description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9100, help="0 picks a free port")
    parser.add_argument("--latency-ms", type=float, default=0.0, help="delay every answer by this much")
    args = parser.parse_args(argv)
    if not 0 <= args.latency_ms <= 3_600_000:
        parser.error("--latency-ms must be between 0 and 3600000")
    try:
        with asyncio.Runner(loop_factory=loop_factory()) as runner:
            runner.run(serve(args.host, args.port, args.latency_ms))
    except OSError as exc:
        print(f"fast_server: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
