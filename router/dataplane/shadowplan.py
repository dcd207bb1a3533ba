"""What `Mirror.begin` reads on every live request of a shadowed route: the route's settings as
native fields (`ShadowPlan`), and its pacing state (`Pacer`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from router.config import RouteConfig
from router.dataplane.balancer import BackendGroup

if TYPE_CHECKING:
    from router.runtime import Runtime

__all__ = ["PATHS_REMEMBERED", "Pacer", "ShadowPlan"]

PATHS_REMEMBERED = 1024  # request paths each shadowed route remembers the `shadow.paths` answer for


class Pacer:
    """Spaces one route's copies at what the shadow can take: max_concurrency per its typical latency.

    Data-plane state, local to the process: copies and their answers spread evenly instead of
    leaving and returning in bursts that would stall live requests."""

    __slots__ = ("in_flight", "latency_ewma", "next_send")

    def __init__(self) -> None:
        self.in_flight = 0
        self.latency_ewma = 0.0
        self.next_send = 0.0

    def observe(self, seconds: float) -> None:
        self.latency_ewma = seconds if self.latency_ewma == 0 else 0.9 * self.latency_ewma + 0.1 * seconds


class ShadowPlan:
    """One shadowed route's settings as native fields, for the runtime that compiled the route.

    `Mirror.begin` runs on every live request of a shadowed route, and nearly all of them are
    paced away at full load (64 copies per 200 ms of shadow latency against tens of thousands of
    requests a second): reading the frozen config objects, matching the path with two regular
    expressions and scanning the pools for spares cost a tenth of a proxied request. The plan
    reads them once; matched paths are remembered (bounded: a client sending unique paths only
    costs the regular expressions again)."""

    def __init__(self, rt: Runtime, route: RouteConfig, pacer: Pacer) -> None:
        cfg = route.shadow
        assert cfg is not None
        self.rt = rt
        self.route = route
        self.name = route.name
        self.primary = route.primary
        self.pacer = pacer
        self.group: BackendGroup = rt.shadow_groups[cfg.backend]
        self.methods: frozenset[bytes] = cfg.methods
        self.percent = float(cfg.percent)
        self.noise_percent = float(cfg.noise_percent)
        self.max_body = cfg.max_body
        self.max_concurrency = cfg.max_concurrency
        self.timeout = float(cfg.timeout or route.timeout or rt.config.limits.request_timeout)
        self.llm = rt.table.by_name[route.name].llm
        self.judged = cfg.judge is not None
        self.warm_at = 0.0
        self._paths = cfg.paths
        self._matched: dict[str, bool] = {}

    def mirrors(self, path: str) -> bool:
        known = self._matched.get(path)
        if known is None:
            known = self._paths.mirrors(path)
            if len(self._matched) >= PATHS_REMEMBERED:
                self._matched.clear()
            self._matched[path] = known
        return known
