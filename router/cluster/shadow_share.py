"""Shadow reports summed over the cluster (`/-/routes/NAME/shadow` and `/diffs` on any member).

Every figure of `ShadowStats` is a counter or a fixed-bucket histogram, so the reports of several
processes add up. Each member writes its own totals (not deltas: writing them again is harmless)
into the hash `mr:{name}:shadow:{route}`, one field per member, when they changed, at most every
second; it then reads every member's entry and keeps the sum for the admin API. Entries written
for another (primary, shadow) pair are left out, so a YAML change starts the report afresh. A
member that stopped still counts: the report covers the cluster since the stats started.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from router.analysis.histogram import Histogram
from router.cluster.store import Store
from router.control.shadowstats import DROP_REASONS, ShadowStats

SHARED_RECENT = 20  # disagreements each member shares; the report shows the newest of all
TTL_S = 14 * 86400
_COUNTERS = ("mirrored", "compared", "agreements", "extraction_errors", "live_errors", "shadow_errors", "label_n",
             "label_agree", "text_n", "noise_samples")
_TABLES = ("skipped", "shadow_error_kinds")  # (and `dropped`, counted in slots: see encode and add)


def _hist(h: Histogram) -> dict[str, Any]:
    return {"c": {str(i): n for i, n in enumerate(h.counts) if n}, "s": h.sum, "t": h.total}


def _add_hist(h: Histogram, data: Mapping[str, Any]) -> None:
    for i, n in data["c"].items():
        h.counts[int(i)] += int(n)
    h.sum += float(data["s"])
    h.total += int(data["t"])


def encode(s: ShadowStats) -> str:
    data: dict[str, Any] = {name: getattr(s, name) for name in _COUNTERS}
    data.update({name: dict(getattr(s, name)) for name in _TABLES}, dropped=s.dropped)
    data.update(key=list(s.key), started=s.started, text_similarity_sum=s.text_similarity_sum, fields=s.fields,
                noise_fields=s.noise_fields, mismatch_sets=[[sorted(k), n] for k, n in s.mismatch_sets.items()],
                live=_hist(s.live_latency), shadow=_hist(s.shadow_latency),
                diff={"neg": _hist(s.paired_diff.negative), "pos": _hist(s.paired_diff.positive),
                      "zero": s.paired_diff.zero},
                recent=list(s.recent)[-SHARED_RECENT:])
    return json.dumps(data)


def add(total: ShadowStats, data: Mapping[str, Any]) -> None:
    """Add one member's totals (as `encode` wrote them) to `total`."""
    for name in _COUNTERS:
        setattr(total, name, getattr(total, name) + int(data[name]))
    for k, n in data["dropped"].items():
        if k in DROP_REASONS:  # (a member on a version with other reasons: theirs are left out)
            total.add_dropped(k, int(n))
    for name in _TABLES:
        table = getattr(total, name)
        for k, n in data[name].items():
            table[k] += int(n)
    total.started = min(total.started, float(data["started"]))
    total.text_similarity_sum += float(data["text_similarity_sum"])
    for table, theirs in ((total.fields, data["fields"]), (total.noise_fields, data["noise_fields"])):
        for field, (n, k) in theirs.items():
            counts = table.setdefault(field, [0, 0])
            counts[0] += int(n)
            counts[1] += int(k)
    for names, n in data["mismatch_sets"]:
        total.mismatch_sets[frozenset(names)] += int(n)
    _add_hist(total.live_latency, data["live"])
    _add_hist(total.shadow_latency, data["shadow"])
    _add_hist(total.paired_diff.negative, data["diff"]["neg"])
    _add_hist(total.paired_diff.positive, data["diff"]["pos"])
    total.paired_diff.zero += int(data["diff"]["zero"])
    recent = sorted([*total.recent, *data["recent"]], key=lambda d: float(d.get("time", 0)))
    total.recent.clear()
    total.recent.extend(recent[-(total.recent.maxlen or 50):])


def merged(local: ShadowStats, entries: Mapping[str, str], member: str) -> ShadowStats:
    """This member's live stats plus every other member's entry for the same (primary, shadow)."""
    total = ShadowStats(*local.key)
    total.started = local.started
    add(total, json.loads(encode(local)) | {"recent": list(local.recent)})
    for who, text in entries.items():
        if who == member:
            continue
        data = json.loads(text)
        if tuple(data.get("key", ())) == local.key:
            add(total, data)
    return total


class SharedShadow:
    """Publishes this member's shadow stats and keeps the cluster-wide sums for the admin API."""

    def __init__(self, store: Store, member: str) -> None:
        self.store = store
        self.member = member
        self.sent: dict[str, str] = {}  # route -> what was last written
        self.view: dict[str, ShadowStats] = {}

    async def sync(self, local: Mapping[str, ShadowStats]) -> None:
        routes = sorted(local)
        if not routes:
            self.view = {}
            return
        pipe = self.store.redis.pipeline(transaction=False)
        encoded = {route: encode(local[route]) for route in routes}
        for route, text in encoded.items():
            if self.sent.get(route) != text:
                pipe.hset(self.store.key("shadow", route), self.member, text)
                pipe.expire(self.store.key("shadow", route), TTL_S)
        for route in routes:
            pipe.hgetall(self.store.key("shadow", route))
        results = await self.store.call(pipe.execute())
        self.sent.update(encoded)
        self.view = {route: merged(local[route], entries, self.member)
                     for route, entries in zip(routes, results[-len(routes):], strict=True)}
