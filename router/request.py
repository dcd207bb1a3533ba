"""One parsed client request, as the data plane holds it."""

from __future__ import annotations

# (lower-case name, name as sent, value)
Header = tuple[bytes, bytes, bytes]


class Request:
    """A complete client request: method, target, headers (in order, as received) and body.

    `index` maps lower-case header names to values (repeated headers joined with ", "); it is
    built while parsing, so lookups on the hot path cost one dict probe.
    """

    __slots__ = ("body", "headers", "index", "keep_alive", "method", "path", "peer", "query",
                 "request_id", "started", "target", "version")

    def __init__(self, method: bytes, target: bytes, version: bytes, headers: list[Header],
                 index: dict[bytes, bytes], body: bytes, keep_alive: bool, peer: str, started: float) -> None:
        self.method = method
        self.target = target
        self.version = version
        self.headers = headers
        self.index = index
        self.body = body
        self.keep_alive = keep_alive
        self.peer = peer
        self.started = started
        path, _, query = target.partition(b"?")
        self.path = path.decode("latin-1")
        self.query = query.decode("latin-1")
        self.request_id = b""

    def client(self, trusted_hops: int) -> str:
        """The client's address: the peer itself, or with trusted proxies in front, the address
        the outermost trusted one saw (counting X-Forwarded-For from the right)."""
        if trusted_hops <= 0:
            return self.peer
        xff = self.index.get(b"x-forwarded-for")
        chain = [p.strip() for p in xff.decode("latin-1").split(",") if p.strip()] if xff else []
        chain.append(self.peer)
        return chain[max(0, len(chain) - 1 - trusted_hops)]

    def header(self, name: str) -> str | None:
        """A header's value by lower-case name."""
        value = self.index.get(name.encode("latin-1"))
        return None if value is None else value.decode("latin-1")
