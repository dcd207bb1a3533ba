"""The one metrics recorder: exports the router's counters in Prometheus format at scrape time.

The ledger keeps plain ints, fed by the data path's outcome records; this collector turns them into metric families
only when Prometheus scrapes, so the hot path never takes a metrics lock. Labels are bounded:
route and backend names come from the YAML, status is reduced to its class (2xx, 4xx...).
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from router.analysis.decision import Phase
from router.analysis.histogram import EXPORT_BOUNDS, export_buckets
from router.cluster.metrics import cluster_metrics
from router.control.rollout import RolloutController
from router.control.shadowstats import ShadowStats
from router.observe.llmmetrics import llm_metrics
from router.observe.monitor import Monitor

if TYPE_CHECKING:
    from router.app import Router


class RouterCollector(Collector):
    """Reads the live router state on every scrape."""

    def __init__(self, router: Callable[[], Router]) -> None:
        self.router = router

    def collect(self) -> Iterator[Metric]:
        router = self.router()
        rt = router.runtime
        ledger = rt.ledger
        stats = ledger.stats
        yield from self._requests(stats.requests)
        hist = HistogramMetricFamily("router_request_duration_seconds",
                                     "Time from request received to response complete.",
                                     labels=["route", "backend"])
        for (route, backend), h in sorted(stats.latency.items()):
            cumulative, buckets = 0.0, []
            for bound, count in zip(EXPORT_BOUNDS, h, strict=False):
                cumulative += count
                buckets.append((repr(bound), cumulative))
            buckets.append(("+Inf", cumulative + h[len(EXPORT_BOUNDS)]))
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
        yield GaugeMetricFamily("router_requests_in_flight", "Requests being proxied now.", value=router.data.in_flight)
        percent = GaugeMetricFamily("router_candidate_percent", "Current candidate share of the route, percent.",
                                    labels=["route"])
        for compiled in rt.table.routes:
            percent.add_metric([compiled.name], ledger.percent(compiled.config))
        yield percent
        pools = GaugeMetricFamily("router_upstream_connections", "Open backend connections.",
                                  labels=["backend", "state"])
        available = GaugeMetricFamily("router_backend_endpoints_available", "Endpoints in rotation (not "
                                      "ejected, not failing health checks).", labels=["backend"])
        now = time.monotonic()
        for name, group in sorted(rt.groups.items()):
            pools.add_metric([name, "idle"], sum(len(p.idle) for p in group.pools))
            pools.add_metric([name, "busy"], sum(p.busy for p in group.pools))
            available.add_metric([name], sum(s.available(now) for s in group.states))
        yield pools
        yield available
        shadow_pools = GaugeMetricFamily("router_shadow_upstream_connections", "Open connections of the shadow's "
                                         "own pools (mirrored copies).", labels=["backend", "state"])
        for name, group in sorted(rt.shadow_groups.items()):
            shadow_pools.add_metric([name, "idle"], sum(len(p.idle) for p in group.pools))
            shadow_pools.add_metric([name, "busy"], sum(p.busy for p in group.pools))
        yield shadow_pools
        yield CounterMetricFamily("router_endpoint_ejections", "Endpoints taken out of rotation after "
                                  "consecutive failures.", value=router.health.ejections)
        fallback = CounterMetricFamily("router_candidate_fallbacks", "Requests for a candidate with no available "
                                       "endpoint, sent to the primary instead.", labels=["route"])
        for route, n in sorted(ledger.fallbacks.items()):
            fallback.add_metric([route], n)
        yield fallback
        reloads = CounterMetricFamily("router_config_reloads", "Config reloads by result.", labels=["result"])
        reloads.add_metric(["success"], router.reloads_ok)
        reloads.add_metric(["failure"], router.reloads_failed)
        yield reloads
        saves = CounterMetricFamily("router_state_save_failures", "State file saves that failed (the previous "
                                    "file was kept).", labels=["file"])
        for store in (router.state_store, router.rollouts.store):
            saves.add_metric([store.path.name], store.save_failures)
        yield saves
        yield GaugeMetricFamily("router_config_last_reload_successful",
                                "1 if the last config reload succeeded (or none was tried).",
                                value=1 if router.last_reload_ok else 0)
        yield GaugeMetricFamily("router_client_connections", "Open client connections.",
                                value=len(router.data.connections))
        yield CounterMetricFamily("router_client_connections_rejected", "Client connections refused "
                                  "over limits.max_connections.", value=router.data.rejected_connections)
        yield from shadow_metrics(ledger.shadow)
        yield from rollout_metrics(router.rollouts)
        yield from monitor_metrics(router.monitor)
        yield from llm_metrics(ledger.llm)
        yield from cluster_metrics(router.cluster)

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


def shadow_metrics(all_stats: Mapping[str, ShadowStats]) -> Iterator[Metric]:
    """Shadow counters by route; field labels are bounded by ShadowStats.MAX_FIELDS."""
    requests = CounterMetricFamily("router_shadow_requests", "Live requests mirrored or not mirrored "
                                   "(dropped_concurrency, dropped_body_too_large).", labels=["route", "result"])
    comparisons = CounterMetricFamily("router_shadow_comparisons", "Shadow comparisons by outcome "
                                      "(agree, disagree, error = output not extractable).", labels=["route", "result"])
    fields = CounterMetricFamily("router_shadow_field_comparisons", "Comparisons per output field.",
                                 labels=["route", "field", "result"])
    noise = CounterMetricFamily("router_shadow_noise_comparisons", "Primary-vs-primary comparisons per "
                                "output field (noise baseline).", labels=["route", "field", "result"])
    labels = CounterMetricFamily("router_shadow_label_comparisons", "Comparisons of predicted labels.",
                                 labels=["route", "result"])
    errors = CounterMetricFamily("router_shadow_errors", "Mirrored requests where a side failed.",
                                 labels=["route", "side"])
    latency = HistogramMetricFamily("router_shadow_latency_seconds", "Latency of mirrored requests, "
                                    "per side, over the same requests.", labels=["route", "side"])
    for route, s in sorted(all_stats.items()):
        requests.add_metric([route, "mirrored"], s.mirrored)
        for reason, n in sorted(s.dropped.items()):
            requests.add_metric([route, f"dropped_{reason}"], n)
        comparisons.add_metric([route, "agree"], s.agreements)
        comparisons.add_metric([route, "disagree"], s.compared - s.agreements)
        comparisons.add_metric([route, "error"], s.extraction_errors)
        for family, table in ((fields, s.fields), (noise, s.noise_fields)):
            for name, (n, k) in sorted(table.items()):
                family.add_metric([route, name, "match"], n - k)
                family.add_metric([route, name, "mismatch"], k)
        labels.add_metric([route, "agree"], s.label_agree)
        labels.add_metric([route, "disagree"], s.label_n - s.label_agree)
        errors.add_metric([route, "live"], s.live_errors)
        errors.add_metric([route, "shadow"], s.shadow_errors)
        for side, hist in (("live", s.live_latency), ("shadow", s.shadow_latency)):
            latency.add_metric([route, side], export_buckets(hist), sum_value=hist.sum)
    yield from (requests, comparisons, fields, noise, labels, errors, latency)


def rollout_metrics(rollouts: RolloutController) -> Iterator[Metric]:
    """Phase per route, and the current step window's decision inputs (counters that sum across replicas)."""
    phase = GaugeMetricFamily("router_rollout_phase", "1 for the route's current rollout phase.",
                              labels=["route", "phase"])
    step = GaugeMetricFamily("router_rollout_step", "Index of the current rollout step.", labels=["route"])
    comparisons = GaugeMetricFamily("router_rollout_window_comparisons", "Shadow comparisons in the current "
                                    "step window, and how many agreed.", labels=["route", "result"])
    requests = GaugeMetricFamily("router_rollout_window_requests", "Requests in the current step window, "
                                 "by side and outcome.", labels=["route", "side", "result"])
    for name, rr in sorted(rollouts.routes.items()):
        for p in (*map(str, Phase), "completed"):  # completed: the promoted candidate is the primary now
            phase.add_metric([name, p], 1 if rr.phase == p else 0)
        step.add_metric([name], rr.state.step_index)
        ev = rollouts.evidence(rr)
        comparisons.add_metric([name, "agree"], ev.agreements)
        comparisons.add_metric([name, "disagree"], ev.comparisons - ev.agreements)
        for side, counts in (("primary", ev.primary), ("candidate", ev.candidate)):
            requests.add_metric([name, side, "ok"], counts.requests - counts.errors)
            requests.add_metric([name, side, "error"], counts.errors)
    notify = CounterMetricFamily("router_rollout_notifications", "Webhook calls on phase changes.",
                                 labels=["result"])
    notify.add_metric(["ok"], rollouts.webhook.sent)
    notify.add_metric(["failed"], rollouts.webhook.failed)
    yield from (phase, step, comparisons, requests, notify)


def monitor_metrics(monitor: Monitor) -> Iterator[Metric]:
    """Prediction log, feedback loop and anomaly alerts."""
    if monitor.log is not None:
        records = CounterMetricFamily("router_prediction_log_records", "Prediction log records by outcome.",
                                      labels=["result"])
        for key, n in sorted(monitor.log.counters().items()):
            records.add_metric([key], n)
        yield records
    yield CounterMetricFamily("router_monitor_dropped", "Finished requests the monitor's bounded queue could "
                              "not take (not logged, not remembered for feedback).", value=monitor.dropped)
    yield GaugeMetricFamily("router_monitor_queue_bytes", "Bytes of captured bodies waiting in the monitor's "
                            "queue (bounded; beyond it requests are dropped and counted).", value=monitor.queued_bytes)
    feedback = CounterMetricFamily("router_feedback", "Feedback items by outcome (malformed: whole bodies).",
                                   labels=["result"])
    for key, n in sorted(monitor.feedback_counts.items()):
        feedback.add_metric([key], n)
    yield feedback
    accuracy = GaugeMetricFamily("router_feedback_accuracy", "Share of labelled predictions that were right.",
                                 labels=["route", "backend"])
    labelled = GaugeMetricFamily("router_feedback_labelled", "Predictions with feedback.", labels=["route", "backend"])
    for row in monitor.accuracy:
        if row.labelled:
            accuracy.add_metric([row.route, row.backend], row.correct / row.labelled)
            labelled.add_metric([row.route, row.backend], row.labelled)
    yield accuracy
    yield labelled
    fired = CounterMetricFamily("router_alerts", "Anomaly alerts fired, by kind.", labels=["kind"])
    active = GaugeMetricFamily("router_alerts_active", "Anomaly alerts open now, by kind.", labels=["kind"])
    open_now = [a.kind for a in monitor.detector.active()] if monitor.detector else []
    for kind in ("latency_spike", "error_spike", "drift"):
        fired.add_metric([kind], monitor.alerts_fired.get(kind, 0))
        active.add_metric([kind], open_now.count(kind))
    yield fired
    yield active




def make_registry(router: Callable[[], Router]) -> CollectorRegistry:
    """A fresh registry per router, so tests never share metric state."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(RouterCollector(router))
    return registry
