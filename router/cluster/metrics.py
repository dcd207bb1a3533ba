"""Prometheus families of a cluster member, exported at scrape time from its current state."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from router.cluster.node import Member


def cluster_metrics(member: Member | None) -> Iterator[Metric]:
    if member is None:
        return
    yield GaugeMetricFamily("router_cluster_store_up", "1 while the cluster's Redis answers; 0: serving the last "
                            "state, no rollout transitions.", value=1 if member.store.up else 0)
    yield GaugeMetricFamily("router_cluster_leader", "1 while this process holds the leader lease.",
                            value=1 if member.leader else 0)
    yield GaugeMetricFamily("router_cluster_state_version", "Version of the shared state this process applies.",
                            value=member.state.version)
    yield GaugeMetricFamily("router_cluster_state_problem", "1 when the shared state cannot be used (another "
                            "format or cluster): rollouts held.", value=0 if member.problem is None else 1)
    yield CounterMetricFamily("router_cluster_refused_writes", "Decisions of this process the shared store refused "
                              "(fenced by a newer leader, or stale).", value=member.refused)
    yield CounterMetricFamily("router_cluster_dropped_windows", "Step-window counts dropped because Redis stayed "
                              "away longer than the local buffer.", value=member.ledger.dropped)
    yield CounterMetricFamily("router_cluster_flushes", "Batches of window counts written to Redis.",
                              value=member.ledger.flushes)
