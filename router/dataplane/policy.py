"""Choosing the backend for one request: overrides, then the sticky bucket or a weighted draw.

Pure functions. The sticky bucket is a keyed BLAKE2b hash of (route salt, key), never Python's
`hash()`, so every router process on every host, before and after restarts, puts a key in the same
bucket. A key goes to the candidate when its bucket lies below the candidate percentage, so raising
the percentage only moves keys from primary to candidate, and lowering it moves them back.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal
from urllib.parse import parse_qsl

from router.config import OverrideMatch, RouteConfig, StickyKey

Reason = Literal["override", "sticky", "random", "primary"]


@dataclass(frozen=True, slots=True)
class Choice:
    """The backend picked and why; `key_missing` marks a sticky route drawn at random."""

    backend: str
    reason: Reason
    key_missing: bool = False


class RequestView:
    """Read-only access to what the policy looks at; query and cookies are parsed only on demand."""

    __slots__ = ("_cookies", "_query", "client", "header", "query_string")

    def __init__(self, header: Callable[[str], str | None], query_string: str,
                 client: Callable[[], str] = lambda: "") -> None:
        self.header = header
        self.query_string = query_string
        self.client = client
        self._query: dict[str, str] | None = None
        self._cookies: dict[str, str | None] = {}

    def query(self, name: str) -> str | None:
        if self._query is None:
            self._query = dict(parse_qsl(self.query_string, keep_blank_values=True))
        return self._query.get(name)

    def cookie(self, name: str) -> str | None:
        if name not in self._cookies:
            self._cookies[name] = cookie_value(self.header("cookie") or "", name)
        return self._cookies[name]

    def sticky_key(self, key: StickyKey) -> str | None:
        if key.source == "header":
            value = self.header(key.name)
        elif key.source == "cookie":
            value = self.cookie(key.name)
        elif key.source == "client":
            value = self.client()
        else:
            value = self.query(key.name)
        return value or None


def cookie_value(header: str, name: str) -> str | None:
    """The first cookie called `name` in a `Cookie: a=1; b=2` header (RFC 6265 puts the most
    specific first), found in one linear pass. `http.cookies` is not used: it parses every cookie,
    and is quadratic in backslashes before Python 3.11.10 (CVE-2024-7592: one 65 KB header held
    the event loop for seconds)."""
    for pair in header.split(";"):
        key, eq, value = pair.partition("=")
        if eq and key.strip() == name:
            return _unquote(value.strip())
    return None


_ESCAPE = re.compile(r"\\(?:([0-3][0-7]{2})|(.))", re.DOTALL)


def _unquote(value: str) -> str:
    """A double-quoted value without its quotes and backslash escapes, as `http.cookies` reads it."""
    if len(value) < 2 or value[0] != '"' or value[-1] != '"':
        return value
    return _ESCAPE.sub(lambda m: chr(int(m[1], 8)) if m[1] else m[2], value[1:-1])


def bucket(salt: str, key: str) -> float:
    """The key's fixed position in [0, 100): the same everywhere and always."""
    digest = hashlib.blake2b(key.encode(), digest_size=8, key=salt.encode()[:64]).digest()
    return int.from_bytes(digest, "big") * 100.0 / 2**64


def assign(route: RouteConfig, percent: float, key: str) -> str:
    """Which backend a sticky key gets at this percentage (what `/assign` answers)."""
    if route.candidate is None:
        return route.primary
    return route.candidate if bucket(route.split.salt, key) < percent else route.primary


def override_matches(m: OverrideMatch, req: RequestView) -> bool:
    return (all(req.header(n) == v for n, v in m.headers)
            and all(req.query(n) == v for n, v in m.query)
            and all(req.cookie(n) == v for n, v in m.cookies))


def choose(route: RouteConfig, percent: float, req: RequestView, draw: Callable[[], float]) -> Choice:
    """Overrides first, then the split. `draw` returns a uniform float in [0, 1)."""
    for override in route.overrides:
        if override_matches(override.match, req):
            return Choice(override.backend, "override")
    candidate = route.candidate
    if candidate is None or percent <= 0:
        return Choice(route.primary, "primary")
    sticky = route.split.sticky
    if sticky is not None:
        key = req.sticky_key(sticky)
        if key is not None:
            return Choice(assign(route, percent, key), "sticky")
    if percent >= 100:
        return Choice(candidate, "random", key_missing=sticky is not None)
    backend = candidate if draw() * 100.0 < percent else route.primary
    return Choice(backend, "random", key_missing=sticky is not None)
