"""A backend's endpoints: round-robin balancing, passive outlier ejection, active health, retry budget.

Endpoint health lives in `EndpointState`, shared (through `HealthRegistry`) by every pool that
reaches the endpoint, the live ones and the shadow's, and across reloads. An endpoint leaves the
rotation after `outlier.consecutive_failures` failures in a row (for `base_ejection`, doubling on
each ejection in a row) or when active checks mark it unhealthy; it returns when its ejection ends
or a health check passes.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Final

from router.config import BackendConfig, Config, Endpoint
from router.dataplane.upstream import PoolSpec, UpstreamPool

RETRY_BUDGET: Final = 0.2  # retries may add at most this share of requests
RETRY_BURST: Final = 10.0  # ... with this many allowed at once after a quiet period


class EndpointState:
    """Health of one endpoint, as the router sees it."""

    __slots__ = ("checks_failed", "checks_passed", "consecutive_failures", "ejected_until", "ejections",
                 "healthy", "url")

    def __init__(self, url: str) -> None:
        self.url = url
        self.consecutive_failures = 0
        self.ejected_until = 0.0
        self.ejections = 0  # in a row; reset by a success
        self.healthy = True  # active checks' verdict
        self.checks_passed = 0
        self.checks_failed = 0

    def available(self, now: float) -> bool:
        return self.healthy and now >= self.ejected_until

    def success(self) -> None:
        self.consecutive_failures = 0
        self.ejections = 0

    def failure(self, backend: BackendConfig, now: float) -> bool:
        """Count a failure; True if this one ejected the endpoint."""
        self.consecutive_failures += 1
        if self.consecutive_failures < backend.outlier.consecutive_failures or now < self.ejected_until:
            return False
        o = backend.outlier
        self.ejected_until = now + min(o.max_ejection, o.base_ejection * 2**self.ejections)
        self.ejections += 1
        self.consecutive_failures = 0
        return True

    def check_result(self, ok: bool, backend: BackendConfig) -> None:
        hc = backend.health
        if hc is None:
            return
        if ok:
            self.checks_passed, self.checks_failed = self.checks_passed + 1, 0
            if not self.healthy and self.checks_passed >= hc.healthy_after:
                self.healthy = True
                self.ejected_until = 0.0  # a passing check also ends an ejection
        else:
            self.checks_failed, self.checks_passed = self.checks_failed + 1, 0
            if self.healthy and self.checks_failed >= hc.unhealthy_after:
                self.healthy = False


class HealthRegistry:
    """Endpoint states by (backend, url), kept across reloads for endpoints that stay."""

    def __init__(self) -> None:
        self.states: dict[tuple[str, str], EndpointState] = {}
        self.ejections = 0
        self.fallbacks: dict[str, int] = {}  # candidate share sent to the primary, by route

    def state(self, backend: str, endpoint: Endpoint) -> EndpointState:
        key = (backend, endpoint.url)
        st = self.states.get(key)
        if st is None:
            st = self.states[key] = EndpointState(endpoint.url)
        return st

    def prune(self, config: Config) -> None:
        keep = {(b.name, e.url) for b in config.backends.values() for e in b.endpoints}
        for key in [k for k in self.states if k not in keep]:
            del self.states[key]


class BackendGroup:
    """The pools of one backend's endpoints, with the choice among them."""

    def __init__(self, backend: BackendConfig, pools: list[UpstreamPool], registry: HealthRegistry) -> None:
        self.backend = backend
        self.name = backend.name
        self.header_line = b"X-Model-Backend: " + backend.name.encode() + b"\r\n"  # on every response
        self.pools = pools
        self.states = [registry.state(backend.name, p.endpoint) for p in pools]
        self.registry = registry
        self._next = 0
        self._retry_tokens = RETRY_BURST

    def pick(self, now: float, *, avoid: UpstreamPool | None = None, panic: bool = False) -> UpstreamPool | None:
        """The next available endpoint's pool (round-robin), or None if none is available.

        With `panic`, an endpoint is returned even if all are out: better a likely failure than none.
        """
        n = len(self.pools)
        for i in range(n):
            k = (self._next + i) % n
            pool = self.pools[k]
            if self.states[k].available(now) and (pool is not avoid or n == 1):
                self._next = k + 1
                return pool
        if panic:
            self._next += 1
            return self.pools[self._next % n]
        return None

    def available(self, now: float) -> bool:
        return any(s.available(now) for s in self.states)

    def report(self, pool: UpstreamPool, ok: bool) -> None:
        state = self.states[self.pools.index(pool)] if len(self.pools) > 1 else self.states[0]
        if ok:
            state.success()
        elif state.failure(self.backend, time.monotonic()):
            self.registry.ejections += 1

    # retry budget: each request earns a fraction of a retry; a retry spends a whole one
    def earn(self) -> None:
        self._retry_tokens = min(RETRY_BURST, self._retry_tokens + RETRY_BUDGET)

    def spend(self) -> bool:
        if self._retry_tokens >= 1.0:
            self._retry_tokens -= 1.0
            return True
        return False


def build_groups(config: Config, registry: HealthRegistry, old: Iterable[UpstreamPool] = (),
                 caps: dict[str, int] | None = None) -> tuple[dict[str, BackendGroup], list[UpstreamPool]]:
    """Groups for the config's backends (or, with `caps`, only those, at that connection cap),
    reusing pools whose spec is unchanged. Returns the groups and the old pools left unused."""
    by_spec = {p.spec: p for p in old}
    groups: dict[str, BackendGroup] = {}
    used: set[int] = set()
    for name, backend in config.backends.items():
        if caps is not None and name not in caps:
            continue
        pools = []
        for endpoint in backend.endpoints:
            cap = caps[name] if caps is not None else backend.max_connections
            spec = PoolSpec(name, endpoint, cap, backend.max_pending, config.limits.connect_timeout,
                            config.limits.max_response_header_size)
            pool = by_spec.get(spec) or UpstreamPool(spec)
            used.add(id(pool))
            pools.append(pool)
        groups[name] = BackendGroup(backend, pools, registry)
    removed = [p for p in by_spec.values() if id(p) not in used]
    return groups, removed
