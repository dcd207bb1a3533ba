"""The runtime: one compiled routing table with its pools, plus the state that outlives tables.

A `Runtime` is immutable and replaced whole on reload; a request keeps the one it started with.
`Splits` and `Stats` are the runtime state that survives swaps (STYLE habit 3).
"""

from __future__ import annotations

import bisect
import logging
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from router.balancer import BackendGroup, HealthRegistry, build_groups
from router.config import Config, RouteConfig
from router.llmstats import LlmState
from router.policy import Choice
from router.shadow import Mirror

if TYPE_CHECKING:
    from router.monitor import Monitor
    from router.rollout import RolloutController
from router.state import StateStore
from router.table import RoutingTable
from router.upstream import UpstreamPool

log = logging.getLogger("router.runtime")

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


@dataclass(frozen=True, slots=True)
class SplitOverride:
    """A runtime candidate percentage, and the YAML route it was set against."""

    percent: float
    base: tuple[str, str | None, float]  # (primary, candidate, YAML candidate_percent)

    @staticmethod
    def base_of(route: RouteConfig) -> tuple[str, str | None, float]:
        return (route.primary, route.candidate, route.split.candidate_percent)


class Splits:
    """Candidate percentages set at run time; they hold until the YAML changes that route."""

    def __init__(self, store: StateStore) -> None:
        self.store = store
        self.overrides: dict[str, SplitOverride] = {}
        # Percentages set by the rollout controller for routes under automatic rollout; they win.
        self.driven: dict[str, float] = {}
        for name, raw in store.load().get("splits", {}).items():
            try:
                primary, candidate, base_percent = raw["base"]
                base = (str(primary), None if candidate is None else str(candidate), float(base_percent))
                self.overrides[name] = SplitOverride(float(raw["percent"]), base)
            except (KeyError, TypeError, ValueError):
                log.error("state file %s: ignoring unreadable split for route %r", store.path, name)

    def percent(self, route: RouteConfig) -> float:
        driven = self.driven.get(route.name)
        if driven is not None:
            return driven
        o = self.overrides.get(route.name)
        return route.split.candidate_percent if o is None else o.percent

    def set(self, route: RouteConfig, percent: float) -> None:
        self.overrides[route.name] = SplitOverride(percent, SplitOverride.base_of(route))
        self.save()

    def reconcile(self, config: Config) -> list[str]:
        """Drop overrides whose route the YAML removed or changed; returns their names."""
        routes = {r.name: r for r in config.routes}
        stale = [name for name, o in self.overrides.items()
                 if name not in routes or tuple(o.base) != SplitOverride.base_of(routes[name])]
        for name in stale:
            del self.overrides[name]
        if stale:
            self.save()
        return stale

    def save(self) -> None:
        data = self.store.load() if self.store.path.exists() else {}
        data["splits"] = {n: {"percent": o.percent, "base": list(o.base)} for n, o in self.overrides.items()}
        self.store.save(data)


class Stats:
    """Request counters and latency histograms, by route and backend. Plain ints: cheap to bump,
    summable across processes, exported by the metrics collector at scrape time."""

    def __init__(self) -> None:
        self.requests: defaultdict[tuple[str, str, int], int] = defaultdict(int)
        self.latency: dict[tuple[str, str], list[float]] = {}
        self.choices: defaultdict[tuple[str, str, str], int] = defaultdict(int)
        self.sticky_key_missing: defaultdict[str, int] = defaultdict(int)
        self.upstream_errors: defaultdict[tuple[str, str], int] = defaultdict(int)
        self.in_flight = 0
        self.llm = LlmState()  # token timings, fallbacks, judge verdicts, cooling backends

    def chosen(self, route: str, choice: Choice) -> None:
        self.choices[(route, choice.backend, choice.reason)] += 1
        if choice.key_missing:
            self.sticky_key_missing[route] += 1

    def upstream_error(self, backend: str, kind: str) -> None:
        self.upstream_errors[(backend, kind)] += 1

    def finished(self, route: str, backend: str, status: int, seconds: float) -> None:
        self.requests[(route, backend, status)] += 1
        h = self.latency.get((route, backend))
        if h is None:
            # counts per bucket, then +Inf, then the sum of observations
            h = self.latency[(route, backend)] = [0.0] * (len(LATENCY_BUCKETS) + 2)
        h[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        h[-1] += seconds

    def by_backend(self, route: str) -> dict[str, int]:
        out: dict[str, int] = defaultdict(int)
        for (r, backend, _), n in self.requests.items():
            if r == route and backend:
                out[backend] += n
        return dict(out)


@dataclass(frozen=True, slots=True)
class Runtime:
    """Everything a request needs: config, table, backend groups by name, and the shared state."""

    config: Config
    table: RoutingTable
    groups: Mapping[str, BackendGroup]
    splits: Splits
    stats: Stats
    mirror: Mirror
    rollouts: RolloutController
    health: HealthRegistry
    monitor: Monitor | None

    @property
    def via(self) -> bytes:
        return self.config.proxy.via_entry

def build_runtime(config: Config, splits: Splits, stats: Stats, mirror: Mirror, rollouts: RolloutController,
                  health: HealthRegistry, monitor: Monitor | None,
                  old: Runtime | None = None) -> tuple[Runtime, list[UpstreamPool]]:
    """A new runtime for `config`, reusing the pools of unchanged backend endpoints.

    Returns the runtime and the old pools it no longer uses (to drain, then close).
    """
    old_pools = [p for g in old.groups.values() for p in g.pools] if old else []
    groups, removed = build_groups(config, health, old_pools)
    removed += mirror.configure(config, health)
    rollouts.configure(config)
    health.prune(config)
    return Runtime(config, RoutingTable(config), groups, splits, stats, mirror, rollouts, health, monitor), removed


def describe(rt: Runtime) -> list[dict[str, Any]]:
    """Routes as the admin API shows them."""
    out = []
    for route in rt.table.routes:
        rc = route.config
        out.append({
            "name": rc.name, "primary": rc.primary, "candidate": rc.candidate,
            "candidate_percent": rt.splits.percent(rc), "yaml_candidate_percent": rc.split.candidate_percent,
            "runtime_split": rc.name in rt.splits.overrides,
            "sticky": str(rc.split.sticky) if rc.split.sticky else None,
            "requests_by_backend": rt.stats.by_backend(rc.name),
            "sticky_key_missing": rt.stats.sticky_key_missing.get(rc.name, 0),
            "shadow": rc.shadow.backend if rc.shadow else None,
            "rollout": rt.rollouts.describe(rc.name),
        })
    return out
