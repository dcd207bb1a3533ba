"""The cluster's Redis seams in process, against a real redis-server: lease, fencing, CAS, flush."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis as redis_sync

from router.cluster.lease import Lease
from router.cluster.shared_ledger import SharedLedger
from router.cluster.store import Store, StoreDown
from router.cluster.sync import SharedState, StateDoc, StateProblem
from router.config import parse_config
from router.config.clusterconfig import ClusterConfig
from router.control.splits import Splits
from router.control.state import StateStore
from router.control.window import WindowCounters
from tests.helpers import free_port
from tests.redis_server import RedisServer

CFG = ClusterConfig("t", "redis://unused", None, 3.0)


async def test_a_deposed_leader_write_is_fenced(redis: RedisServer) -> None:
    a, b = Store(CFG, redis.url), Store(CFG, redis.url)
    try:
        la, lb = Lease(a, "a", 3.0), Lease(b, "b", 3.0)
        await la.step()
        await lb.step()
        assert la.leader and la.epoch == 1 and not lb.leader
        doc_a, doc_b = StateDoc(a), StateDoc(b)
        first = await doc_a.write(SharedState(rollouts={"r": {"phase": "shadowing"}}), 0, la.epoch, [])
        assert first.ok and first.version == 1
        # A pauses past its lease (here: the key expires), B takes over with the next epoch
        redis_sync.Redis.from_url(redis.url).delete("mr:t:leader")
        await lb.step()
        assert lb.epoch == 2
        stale = await doc_a.write(SharedState(rollouts={"r": {"phase": "promoted"}}), 1, la.epoch, [{"x": 1}])
        assert not stale.ok and stale.fenced
        ok = await doc_b.write(SharedState(rollouts={"r": {"phase": "progressing"}}), 1, lb.epoch, [{"route": "r"}])
        assert ok.ok and ok.version == 2
        state = await doc_a.read()
        assert state.version == 2 and state.rollouts["r"]["phase"] == "progressing"
        assert await doc_a.tail("r", 10) == [{"route": "r"}]  # the fenced write's log entry was not kept
        # an operator's write (no epoch) against a version someone already replaced is refused too
        conflict = await doc_a.write(SharedState(), 1, None, [])
        assert not conflict.ok and conflict.why == "version 2"
        # A's next renewal finds B's lease: it stops deciding
        await la.step()
        assert not la.leader
    finally:
        await a.close()
        await b.close()


async def test_other_clusters_and_other_formats_are_left_untouched(redis: RedisServer) -> None:
    client = redis_sync.Redis.from_url(redis.url, decode_responses=True)
    client.hset("mr:other:state", mapping={"version": 7, "format": 1, "cluster": "other", "doc": "{}"})
    store = Store(CFG, redis.url)
    try:
        doc = StateDoc(store)
        assert (await doc.read()).version == 0  # another cluster's keys are not ours
        client.hset("mr:t:state", mapping={"version": 3, "format": 0, "cluster": "t", "doc": "{}"})
        with pytest.raises(StateProblem, match="older router"):
            await doc.read()
        refused = await doc.write(SharedState(), 3, None, [])
        assert not refused.ok and refused.why == "format 0"
        assert client.hget("mr:t:state", "format") == "0" and client.hget("mr:t:state", "version") == "3"
        client.hset("mr:t:state", mapping={"format": 1, "cluster": "someone-else"})
        with pytest.raises(StateProblem, match="belongs to cluster 'someone-else'"):
            await doc.read()
        assert client.hget("mr:other:state", "version") == "7"
    finally:
        await store.close()
        client.close()


async def test_window_counts_wait_for_redis_and_sum_over_members(redis: RedisServer, tmp_path: Path) -> None:
    stores = [Store(CFG, redis.url), Store(CFG, redis.url)]
    config = parse_config(f"listen: 127.0.0.1:{free_port()}\nbackends: {{a: {{url: 'http://127.0.0.1:1'}}}}\n"
                          "routes: [{name: r, match: {path_prefix: /}, primary: a}]\n")
    ledgers = [SharedLedger(Splits(StateStore(tmp_path / str(i)))) for i in range(2)]
    try:
        for ledger in ledgers:
            ledger.reconcile(config)
            ledger.open_window("r", WindowCounters(("a", "b"), False, 100.0))
        for _ in range(3):
            ledgers[0].windows["r"].live("b", 200, 0.01)
        ledgers[1].windows["r"].live("a", 500, 0.01)
        await ledgers[0].flush(stores[0])
        await ledgers[1].flush(stores[1])
        await ledgers[0].flush(stores[0])  # reads back the other member's counts
        ev = ledgers[0].evidence("r")
        assert ev is not None and (ev.candidate.requests, ev.primary.requests, ev.primary.errors) == (3, 1, 1)
        # Redis away: counts wait locally, still count in the evidence, and are flushed later
        redis.stop()
        ledgers[0].windows["r"].live("b", 200, 0.01)
        with pytest.raises(StoreDown):
            await ledgers[0].flush(stores[0])
        assert not stores[0].up and ledgers[0].pending
        ev = ledgers[0].evidence("r")
        assert ev is not None and ev.candidate.requests == 4
        redis.start()  # an empty Redis (no persistence): only what was pending is summed again
        await ledgers[0].flush(stores[0])
        assert stores[0].up and not ledgers[0].pending
        ev = ledgers[0].evidence("r")
        assert ev is not None and ev.candidate.requests == 1
    finally:
        for store in stores:
            await store.close()


async def test_an_unreachable_redis_is_a_clear_error_not_a_hang() -> None:
    store = Store(CFG, f"redis://127.0.0.1:{free_port()}/0")
    try:
        lease = Lease(store, "a", 3.0)
        await lease.step()
        assert not lease.leader and not store.up
        assert store.last_error and "Connect" in store.last_error
    finally:
        await store.close()


def test_every_window_counter_survives_the_round_trip_through_redis_fields() -> None:
    """Paired error counts, 4xx, LLM timings and judge verdicts sum across members like the rest."""
    from router.analysis.llm import LlmOutcome
    from router.cluster.shared_ledger import add_fields, flatten, window_of
    from router.control.window import WindowCounters

    w = WindowCounters(("v1", "v2"), True, 0.0)
    w.pair(200, None, 0.01, 503, None, 0.02)
    w.pair(422, None, 0.01, 200, None, 0.02)
    w.compared(True)
    w.llm.record(True, LlmOutcome(True, 0.05, 0.01, 7, 10, "reported", "stop"))
    w.llm.verdict("win")
    fields = flatten(w.to_json())
    as_redis_returns = {k.encode(): str(v).encode() for k, v in fields.items()}
    back = window_of(as_redis_returns)
    assert back.evidence() == w.evidence() and back.llm.evidence() == w.llm.evidence()
    assert back.primary.client_errors == 1
    doubled = window_of(add_fields(fields, fields))
    assert doubled.evidence().discordant_candidate == 2 and doubled.llm.evidence().wins == 2


def test_shadow_drop_counts_sum_across_members() -> None:
    """Drops are counted in list slots on the request path; shared, they still sum by reason, and a
    reason this version does not count (another member's) is left out rather than failing."""
    import json

    from router.cluster.shadow_share import encode, merged
    from router.control.shadowstats import DROP_CONCURRENCY, DROP_PACED, ShadowStats

    mine, theirs = ShadowStats("v1", "v2"), ShadowStats("v1", "v2")
    mine.drops[DROP_PACED] += 3
    theirs.drops[DROP_PACED] += 2
    theirs.drops[DROP_CONCURRENCY] += 5
    other = json.loads(encode(theirs))
    assert other["dropped"] == {"concurrency": 5, "paced": 2}
    other["dropped"]["some_future_reason"] = 7
    total = merged(mine, {"a": encode(mine), "b": json.dumps(other)}, "a")
    assert total.dropped == {"concurrency": 5, "paced": 5}
    assert mine.dropped == {"paced": 3}  # the local stats are not changed by the sum
