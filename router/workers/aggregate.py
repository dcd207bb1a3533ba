"""The supervisor's view of its workers' metrics: every family once, each sample labelled by worker.

Each worker exports its own counters; the supervisor scrapes them over their admin sockets and
re-exports them with a `worker` label, so `sum without (worker) (...)` gives the host's totals and
a family's HELP and TYPE appear once (promtool-clean).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families


def merge(texts: Iterable[tuple[int, str]]) -> Iterator[Metric]:
    """The families of every worker's exposition text, `worker` label added to each sample."""
    families: dict[str, Metric] = {}
    for index, text in texts:
        for family in text_string_to_metric_families(text):
            merged = families.get(family.name)
            if merged is None:
                merged = families[family.name] = Metric(family.name, family.documentation, family.type, family.unit)
            for s in family.samples:
                merged.add_sample(s.name, {**s.labels, "worker": str(index)}, s.value, s.timestamp, s.exemplar)
    yield from families.values()
