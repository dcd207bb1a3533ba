"""The compiled routing table: immutable, indexed, swapped whole on reload.

Exact paths are a dict lookup and prefixes are looked up by length (one dict probe per distinct
prefix length), so a table of a thousand prefix routes costs about as much as one. Only
`path_regex` routes are scanned in order. The first route in file order that matches wins.

A prefix matches at a boundary only: `/v1/models/fraud` takes `/v1/models/fraud`,
`/v1/models/fraud:predict` (KServe V1) and `/v1/models/fraud/infer` (V2 style), but not
`/v1/models/fraud-v2:predict`, which a plain string prefix would steal. A prefix ending in `/`
takes everything below it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from router.config import Config, RouteConfig
from router.policy import Choice

_BOUNDARY = frozenset("/:")


@dataclass(frozen=True, slots=True)
class Route:
    """A route ready for matching: its config, its position, and its compiled conditions."""

    config: RouteConfig
    index: int
    regex: re.Pattern[str] | None
    # The choice when there is nothing to decide (no overrides, candidate at 0%): made once.
    primary_choice: Choice
    simple: bool

    @property
    def name(self) -> str:
        return self.config.name

    def conditions_hold(self, method: str, path: str, header: Callable[[str], str | None]) -> bool:
        m = self.config.match
        if m.methods is not None and method not in m.methods:
            return False
        if self.regex is not None and self.regex.match(path) is None:
            return False
        return all(header(name) == value for name, value in m.headers)


class RoutingTable:
    """Routes indexed for lookup. Never mutated after construction."""

    __slots__ = ("_exact", "_prefix_lengths", "_prefixes", "_regex", "by_name", "config", "routes")

    def __init__(self, config: Config) -> None:
        self.config = config
        self.routes = tuple(_compile(rc, i) for i, rc in enumerate(config.routes))
        self.by_name: Mapping[str, Route] = {r.name: r for r in self.routes}
        self._exact: dict[str, list[Route]] = {}
        self._prefixes: dict[int, dict[str, list[Route]]] = {}
        self._regex: list[Route] = []
        for route in self.routes:
            m = route.config.match
            if m.path is not None:
                self._exact.setdefault(m.path, []).append(route)
            elif m.path_prefix is not None:
                by_len = self._prefixes.setdefault(len(m.path_prefix), {})
                by_len.setdefault(m.path_prefix, []).append(route)
            else:
                self._regex.append(route)
        # Longest first only to make the candidate lists come out roughly ordered; order is
        # decided by Route.index below.
        self._prefix_lengths = sorted(self._prefixes, reverse=True)

    def match(self, method: str, path: str, header: Callable[[str], str | None]) -> Route | None:
        """The first route, in file order, whose conditions hold for this request."""
        best: Route | None = None
        for route in self._candidates(path):
            if (best is None or route.index < best.index) and route.conditions_hold(method, path, header):
                best = route
        return best

    def _candidates(self, path: str) -> list[Route]:
        found: list[Route] = list(self._exact.get(path, ()))
        n = len(path)
        for length in self._prefix_lengths:
            if length <= n:
                hit = self._prefixes[length].get(path[:length])
                if hit and (length == n or path[length] in _BOUNDARY or path[length - 1] == "/"):
                    found.extend(hit)
        found.extend(self._regex)
        return found


def _compile(rc: RouteConfig, index: int) -> Route:
    pattern = rc.match.path_regex
    return Route(rc, index, re.compile(pattern) if pattern is not None else None,
                 Choice(rc.primary, "primary"), not rc.overrides)
