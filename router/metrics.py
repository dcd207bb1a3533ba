"""The one metrics recorder: exports the router's counters in Prometheus format at scrape time.

The data path bumps plain ints (`runtime.Stats`); this collector turns them into metric families
only when Prometheus scrapes, so the hot path never takes a metrics lock. Labels are bounded:
route and backend names come from the YAML, status is reduced to its class (2xx, 4xx...).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from router.runtime import LATENCY_BUCKETS

if TYPE_CHECKING:
    from router.app import Router


class RouterCollector(Collector):
    """Reads the live router state on every scrape."""

    def __init__(self, router: Callable[[], Router]) -> None:
        self.router = router

    def collect(self) -> Iterator[Metric]:
        router = self.router()
        rt = router.runtime
        stats = rt.stats
        yield from self._requests(stats.requests)
        hist = HistogramMetricFamily("router_request_duration_seconds",
                                     "Time from request received to response complete.",
                                     labels=["route", "backend"])
        for (route, backend), h in sorted(stats.latency.items()):
            cumulative, buckets = 0.0, []
            for bound, count in zip(LATENCY_BUCKETS, h, strict=False):
                cumulative += count
                buckets.append((repr(bound), cumulative))
            buckets.append(("+Inf", cumulative + h[len(LATENCY_BUCKETS)]))
            hist.add_metric([route or "none", backend or "none"], buckets, sum_value=h[-1])
        yield hist
        errors = CounterMetricFamily("router_upstream_errors", "Failed backend exchanges, by kind.",
                                     labels=["backend", "kind"])
        for (backend, kind), n in sorted(stats.upstream_errors.items()):
            errors.add_metric([backend, kind], n)
        yield errors
        choices = CounterMetricFamily("router_backend_choices", "Backend choices by reason "
                                      "(override, sticky, random, primary).", labels=["route", "backend", "reason"])
        for (route, backend, reason), n in sorted(stats.choices.items()):
            choices.add_metric([route, backend, reason], n)
        yield choices
        missing = CounterMetricFamily("router_sticky_key_missing", "Requests on a sticky route without "
                                      "the sticky key, drawn at random.", labels=["route"])
        for route, n in sorted(stats.sticky_key_missing.items()):
            missing.add_metric([route], n)
        yield missing
        yield GaugeMetricFamily("router_requests_in_flight", "Requests being proxied now.", value=stats.in_flight)
        percent = GaugeMetricFamily("router_candidate_percent", "Current candidate share of the route, percent.",
                                    labels=["route"])
        for compiled in rt.table.routes:
            percent.add_metric([compiled.name], rt.splits.percent(compiled.config))
        yield percent
        pools = GaugeMetricFamily("router_upstream_connections", "Open backend connections.",
                                  labels=["backend", "state"])
        for name, pool in sorted(rt.pools.items()):
            pools.add_metric([name, "idle"], len(pool.idle))
            pools.add_metric([name, "busy"], pool.busy)
        yield pools
        reloads = CounterMetricFamily("router_config_reloads", "Config reloads by result.", labels=["result"])
        reloads.add_metric(["success"], router.reloads_ok)
        reloads.add_metric(["failure"], router.reloads_failed)
        yield reloads
        yield GaugeMetricFamily("router_config_last_reload_successful",
                                "1 if the last config reload succeeded (or none was tried).",
                                value=1 if router.last_reload_ok else 0)
        yield GaugeMetricFamily("router_client_connections", "Open client connections.",
                                value=len(router.data.connections))
        yield CounterMetricFamily("router_client_connections_rejected", "Client connections refused "
                                  "over limits.max_connections.", value=router.data.rejected_connections)

    @staticmethod
    def _requests(requests: dict[tuple[str, str, int], int]) -> Iterator[Metric]:
        by_class: defaultdict[tuple[str, str, str], int] = defaultdict(int)
        for (route, backend, status), n in requests.items():
            by_class[(route or "none", backend or "none", f"{status // 100}xx")] += n
        family = CounterMetricFamily("router_requests", "Client requests by route, backend and status class.",
                                     labels=["route", "backend", "code"])
        for labels, n in sorted(by_class.items()):
            family.add_metric(list(labels), n)
        yield family


def make_registry(router: Callable[[], Router]) -> CollectorRegistry:
    """A fresh registry per router, so tests never share metric state."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(RouterCollector(router))
    return registry
