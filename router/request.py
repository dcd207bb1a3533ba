"""One parsed client request, as the data plane holds it."""

from __future__ import annotations


class Request:
    """A complete client request: method, target, headers (in order, as received) and body."""

    __slots__ = ("_index", "body", "headers", "keep_alive", "method", "path", "peer", "query",
                 "request_id", "started", "target", "version")

    def __init__(self, method: bytes, target: bytes, version: bytes, headers: list[tuple[bytes, bytes]],
                 body: bytes, keep_alive: bool, peer: str, started: float) -> None:
        self.method = method
        self.target = target
        self.version = version
        self.headers = headers
        self.body = body
        self.keep_alive = keep_alive
        self.peer = peer
        self.started = started
        path, _, query = target.partition(b"?")
        self.path = path.decode("latin-1")
        self.query = query.decode("latin-1")
        self.request_id = b""
        self._index: dict[str, str] | None = None

    def header(self, name: str) -> str | None:
        """First value of a header by lower-case name; several values are joined with ', '."""
        index = self._index
        if index is None:
            index = {}
            for raw_name, raw_value in self.headers:
                key = raw_name.decode("latin-1").lower()
                value = raw_value.decode("latin-1")
                index[key] = f"{index[key]}, {value}" if key in index else value
            self._index = index
        return index.get(name)

    def header_values(self, lname: bytes) -> list[bytes]:
        return [v for n, v in self.headers if n.lower() == lname]
