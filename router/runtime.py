"""The runtime: one compiled routing table with its pools, and references to the long-lived owners.

A `Runtime` is immutable and replaced whole on reload; a request keeps the one it started with.
`compile_runtime` builds a new one without touching the running one: pools of unchanged endpoints
are carried over by reference, everything else is new. The caller then reconciles the ledger and
swaps in one assignment (Traefik's and Caddy's "build the new, swap, stop the old").
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from router.config import Config
from router.control.ledger import Ledger
from router.dataplane.balancer import BackendGroup, HealthRegistry, build_groups
from router.dataplane.table import RoutingTable
from router.dataplane.upstream import UpstreamPool

if TYPE_CHECKING:
    from router.control.rollout import RolloutController
    from router.dataplane.shadow import Mirror
    from router.observe.monitor import Monitor


class Runtime:
    """Everything a request needs: config, table, backend groups (live and shadow) and the owners
    of state it reports to. Read-only once built (a reload builds a new one).

    A plain class, not a dataclass: the native build compiles it, so the data path reads its
    fields natively (a compiled dataclass would evaluate the annotations, some of which exist only
    for type checking).
    """

    __slots__ = ("backend_header", "config", "groups", "health", "ledger", "mirror", "monitor", "shadow_groups",
                 "table", "via", "via_name")

    def __init__(self, config: Config, table: RoutingTable, groups: Mapping[str, BackendGroup],
                 shadow_groups: Mapping[str, BackendGroup], ledger: Ledger, mirror: Mirror,
                 health: HealthRegistry, monitor: Monitor | None) -> None:
        self.config = config
        self.table = table
        self.groups = groups
        self.shadow_groups = shadow_groups  # the shadow's own pools, so copies never queue live requests
        self.ledger = ledger
        self.mirror = mirror
        self.health = health
        self.monitor = monitor
        # read on every request: copied out of the (interpreted) config objects once per runtime
        self.via = config.proxy.via_entry  # this router's Via entry
        self.via_name = config.proxy.via.encode()  # its pseudonym, to spot a loop
        self.backend_header = config.proxy.backend_header

    @property
    def pools(self) -> list[UpstreamPool]:
        return [p for groups in (self.groups, self.shadow_groups) for g in groups.values() for p in g.pools]


def shadow_caps(config: Config) -> dict[str, int]:
    """Connection caps of the shadow pools: every backend a shadow (or its noise copy) may reach."""
    caps: dict[str, int] = {}
    for route in config.routes:
        if route.shadow is not None:
            for name in (route.shadow.backend, route.primary):
                caps[name] = caps.get(name, 0) + 2 * route.shadow.max_concurrency
    return caps


def compile_runtime(config: Config, ledger: Ledger, mirror: Mirror, health: HealthRegistry, monitor: Monitor | None,
                    old: Runtime | None = None) -> tuple[Runtime, list[UpstreamPool]]:
    """A new runtime for `config`, reusing the pools of unchanged backend endpoints.

    Touches nothing the running runtime uses; returns the runtime and the old pools it no longer
    uses (to close once the new one is in place).
    """
    live_old = [p for g in old.groups.values() for p in g.pools] if old else []
    shadow_old = [p for g in old.shadow_groups.values() for p in g.pools] if old else []
    groups, removed = build_groups(config, health, live_old)
    shadow_groups, shadow_removed = build_groups(config, health, shadow_old, shadow_caps(config))
    rt = Runtime(config, RoutingTable(config), groups, shadow_groups, ledger, mirror, health, monitor)
    return rt, removed + shadow_removed


def describe(rt: Runtime, rollouts: RolloutController) -> list[dict[str, Any]]:
    """Routes as the admin API shows them: configuration plus a ledger snapshot each."""
    out = []
    for route in rt.table.routes:
        rc = route.config
        snap = rt.ledger.snapshot(rc)
        out.append({
            "name": rc.name, "primary": rc.primary, "candidate": rc.candidate,
            "candidate_percent": snap.candidate_percent, "yaml_candidate_percent": rc.split.candidate_percent,
            "runtime_split": snap.runtime_split,
            "sticky": str(rc.split.sticky) if rc.split.sticky else None,
            "requests_by_backend": dict(snap.requests_by_backend),
            "sticky_key_missing": snap.sticky_key_missing,
            "fallbacks": snap.fallbacks,
            "shadow": rc.shadow.backend if rc.shadow else None,
            "rollout": rollouts.describe(rc.name),
        })
    return out
