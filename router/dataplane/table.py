"""The compiled routing table: immutable, indexed, swapped whole on reload.

Exact paths are a dict lookup and prefixes are looked up by length (one dict probe per distinct
prefix length), so a table of a thousand prefix routes costs about as much as one. Only
`path_regex` routes are scanned in order. The first route in file order that matches wins.

A prefix matches at a boundary only: `/v1/models/fraud` takes `/v1/models/fraud`,
`/v1/models/fraud:predict` (KServe V1) and `/v1/models/fraud/infer` (V2 style), but not
`/v1/models/fraud-v2:predict`, which a plain string prefix would steal. A prefix ending in `/`
takes everything below it.

A route with `match.model` also reads the JSON body's `model`. The body is parsed only when such a
route is among the path's candidates, and at most once per request, so other routes pay nothing.
When the model cannot be read and no other route matches, the request is refused with 400
(`BadModel`), not 404: the client's body is at fault, not the path.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final

from router.analysis.llm import loads_json
from router.config import Config, RouteConfig
from router.config.llmconfig import ModelMatch
from router.dataplane.policy import Choice

_BOUNDARY: Final = frozenset("/:")
_PATHS_REMEMBERED: Final = 4096  # per table; more distinct paths (a scan) are matched afresh
_UNREAD: Final = object()


class BadModel(ValueError):
    """The body's `model` is needed to route the request and cannot be read from it (HTTP 400)."""


def body_model(body: bytes) -> str:
    """The top-level `model` of a JSON object body; BadModel says what is wrong."""
    try:
        doc = loads_json(body)
    except (ValueError, RecursionError):
        raise BadModel("the request body is not valid JSON; this route is chosen by the JSON body's \"model\"") \
            from None
    if not isinstance(doc, dict) or "model" not in doc:
        raise BadModel('the request body has no "model" field; this route is chosen by the JSON body\'s "model"')
    model = doc["model"]
    if not isinstance(model, str):
        raise BadModel(f'"model" must be a string naming the model, got {type(model).__name__}')
    return model


@dataclass(frozen=True, slots=True)
class Route:
    """A route ready for matching: its config, its position, and its compiled conditions."""

    config: RouteConfig
    index: int
    regex: re.Pattern[str] | None
    # The choice when there is nothing to decide (no overrides, candidate at 0%): made once.
    primary_choice: Choice
    simple: bool
    primary_only: bool  # no candidate and no overrides: no split to read, the primary it is
    models: ModelMatch | None  # match.model, or None: a slot read keeps other routes' cost at one check
    llm: bool  # measure tokens, rewrite models, fall back (see is_llm)
    # Read on every request, copied out of the (interpreted) config objects once per runtime:
    name: str
    timeout: float  # the route's timeout, or limits.request_timeout
    retries: int
    methods: frozenset[str] | None  # match.methods
    headers: tuple[tuple[str, str], ...]  # match.headers
    shadowed: bool  # has a shadow

    def conditions_hold(self, method: str, path: str, header: Callable[[str], str | None]) -> bool:
        methods = self.methods
        if methods is not None and method not in methods:
            return False
        if self.regex is not None and self.regex.match(path) is None:
            return False
        headers = self.headers
        return not headers or all(header(name) == value for name, value in headers)



class RoutingTable:
    """Routes indexed for lookup. Never mutated after construction, but for the memo of which
    routes a path may match (a pure function of the path and the table)."""

    __slots__ = ("_exact", "_prefix_lengths", "_prefixes", "_regex", "_seen", "by_name", "config", "routes")

    def __init__(self, config: Config) -> None:
        self.config = config
        self.routes = tuple(_compile(rc, i, config) for i, rc in enumerate(config.routes))
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
        self._seen: dict[str, list[Route]] = {}  # path -> its candidates, for the paths seen first

    def match(self, method: str, path: str, header: Callable[[str], str | None], body: bytes = b"") -> Route | None:
        """The first route, in file order, whose conditions hold for this request.

        Raises BadModel when a model-matched route was a candidate, its model could not be read from
        `body`, and no other route matched.
        """
        best: Route | None = None
        model: object = _UNREAD
        for route in self._candidates(path):
            if (best is None or route.index < best.index) and route.conditions_hold(method, path, header):
                models = route.models
                if models is not None:
                    if model is _UNREAD:
                        try:
                            model = body_model(body)
                        except BadModel as exc:
                            model = exc
                    if not (isinstance(model, str) and models.matches(model)):
                        continue
                best = route
        if best is None and isinstance(model, BadModel):
            raise model
        return best

    def _candidates(self, path: str) -> list[Route]:
        """The routes whose path condition this path meets (the caller must not change the list).
        Remembered for the first _PATHS_REMEMBERED paths: a model server is called on a handful."""
        found = self._seen.get(path)
        if found is not None:
            return found
        found = self._find(path)
        if len(self._seen) < _PATHS_REMEMBERED:
            self._seen[path] = found
        return found

    def _find(self, path: str) -> list[Route]:
        found: list[Route] = list(self._exact.get(path, ()))
        n = len(path)
        for length in self._prefix_lengths:
            if length <= n:
                hit = self._prefixes[length].get(path[:length])
                if hit and (length == n or path[length] in _BOUNDARY or path[length - 1] == "/"):
                    found.extend(hit)
        found.extend(self._regex)
        return found


def _compile(rc: RouteConfig, index: int, config: Config) -> Route:
    pattern = rc.match.path_regex
    return Route(rc, index, re.compile(pattern) if pattern is not None else None,
                 Choice(rc.primary, "primary"), not rc.overrides, not rc.overrides and rc.candidate is None,
                 rc.match.model, is_llm(rc, config),
                 rc.name, rc.timeout or config.limits.request_timeout, rc.retries,
                 rc.match.methods, rc.match.headers, rc.shadow is not None)


def is_llm(rc: RouteConfig, config: Config) -> bool:
    """A route carries LLM traffic when it uses any LLM feature: then its responses are metered
    (TTFT, TPOT, tokens). Every other route keeps the plain relay."""
    backends = {rc.primary, *rc.fallback, *(o.backend for o in rc.overrides)}
    backends |= {rc.candidate} if rc.candidate else set()
    gates = rc.rollout.policy.gates if rc.rollout is not None else None
    return (rc.match.model is not None or bool(rc.fallback)
            or (rc.shadow is not None and rc.shadow.compare.format == "openai")
            or any(config.backends[b].model for b in backends if b in config.backends)
            or (gates is not None and any(g is not None for g in (gates.max_ttft_ratio, gates.max_tpot_ratio,
                                                                   gates.min_judge_win_rate))))
