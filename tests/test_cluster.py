"""Several router processes act as one router through a real redis-server: one decision, the same
split everywhere, cluster-wide evidence, operator actions from any replica, fencing, fail static."""

from __future__ import annotations

import asyncio
import json
import random
import signal
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import redis as redis_sync
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import TOKEN, RouterFactory, RouterProcess, base_config, eventually, free_port, get_json
from tests.redis_server import RedisServer
from tests.test_rollout import rollout_route

ModelFactory = Callable[..., Awaitable[str]]
AUTH = {"Authorization": f"Bearer {TOKEN}"}
APPLY_S = 2.0  # "every member applies a new state within 1 s", with slack for a loaded test machine


def member_config(tmp: Path, i: int, backends: dict[str, str], routes: list[dict[str, Any]], redis_url: str,
                  name: str = "test", lease: str = "2s") -> dict[str, Any]:
    cfg = base_config(tmp, backends, routes, cluster={"name": name, "redis_url": redis_url, "lease": lease})
    cfg["state_dir"] = str(tmp / f"state-{i}")
    return cfg


async def start_members(make_router: RouterFactory, tmp: Path, n: int, backends: dict[str, str],
                        routes: list[dict[str, Any]], redis: RedisServer, **kw: Any) -> list[RouterProcess]:
    return [await make_router(member_config(tmp, i, backends, routes, redis.url, **kw), name=f"m{i}")
            for i in range(n)]


async def cluster(s: aiohttp.ClientSession, r: RouterProcess) -> dict[str, Any]:
    return dict(await get_json(s, r.admin + "/-/cluster"))


async def _members(s: aiohttp.ClientSession, r: RouterProcess, n: int) -> bool:
    info = await cluster(s, r)
    return len(info["members"]) == n and info["lease"]["holder"] is not None


async def leader_of(s: aiohttp.ClientSession, members: list[RouterProcess], timeout: float = 10) -> RouterProcess:
    async def find() -> RouterProcess | None:
        for m in members:
            if m.proc is not None and (await cluster(s, m))["leader"]:
                return m
        return None
    found: RouterProcess = await eventually(find, "a leader to be elected", timeout=timeout)
    return found


async def route(s: aiohttp.ClientSession, r: RouterProcess, name: str = "fraud") -> dict[str, Any]:
    return dict(await get_json(s, f"{r.admin}/-/routes/{name}"))


async def all_agree(s: aiohttp.ClientSession, members: list[RouterProcess], what: Callable[[dict[str, Any]], bool],
                    description: str) -> None:
    async def check() -> bool:
        return all([what(await route(s, m)) for m in members])
    await eventually(check, description, timeout=APPLY_S)


def decision_log(redis: RedisServer, name: str = "test") -> list[dict[str, Any]]:
    client = redis_sync.Redis.from_url(redis.url, decode_responses=True)
    try:
        return [json.loads(line) for line in client.lrange(f"mr:{name}:log", 0, -1)]
    finally:
        client.close()


async def traffic(s: aiohttp.ClientSession, members: list[RouterProcess], stop: asyncio.Event,
                  failures: list[str], clients: int = 4) -> None:
    """Predictions spread over every member until `stop`; every non-200 is a failure."""
    rng = random.Random(7)

    async def client(k: int) -> None:
        n = k
        while not stop.is_set():
            m = members[n % len(members)]
            n += 1
            if m.proc is None:
                continue
            body = {"instances": [[rng.gauss(0, 1) for _ in range(4)]]}
            try:
                async with s.post(m.url + "/v1/models/fraud:predict", json=body) as r:
                    await r.read()
                    if r.status != 200:
                        failures.append(f"{m.url}: {r.status}")
            except aiohttp.ClientError as exc:
                failures.append(f"{m.url}: {exc!r}")
    await asyncio.gather(*(client(k) for k in range(clients)))


async def watch_versions(s: aiohttp.ClientSession, members: list[RouterProcess], until: set[str],
                         limit_s: float = 90) -> list[tuple[str, float]]:
    """Poll every member's applied state version and split until the rollout ends on all of them.

    Checks, throughout, that once any member applies version V, every member applies V or a later one
    within APPLY_S, and that members at the same version serve the same phase and split. Returns the
    (phase, split) states seen, in order."""
    loop = asyncio.get_running_loop()
    first_seen: dict[int, float] = {}
    at_version: dict[int, tuple[str, float]] = {}
    seen: list[tuple[str, float]] = []
    deadline = loop.time() + limit_s
    while loop.time() < deadline:
        states = []
        for m in members:
            status = await get_json(s, m.admin + "/-/status")
            fraud = next(r for r in status["routes"] if r["name"] == "fraud")
            states.append((status["cluster"]["applied_version"], fraud["rollout"]["phase"],
                           fraud["candidate_percent"]))
        now = loop.time()
        for version, phase, percent in states:
            first_seen.setdefault(version, now)
            assert at_version.setdefault(version, (phase, percent)) == (phase, percent), (version, states)
            if not seen or seen[-1] != (phase, percent):
                seen.append((phase, percent))
        lowest = min(v for v, _, _ in states)
        late = [v for v, t in first_seen.items() if v > lowest and now - t > APPLY_S]
        assert not late, f"version {late[0]} not applied by every member within {APPLY_S}s: {states}"
        if all(phase in until for _, phase, _ in states):
            return seen
        await asyncio.sleep(0.1)
    raise AssertionError(f"the rollout did not finish within {limit_s}s: {seen}")


async def test_three_members_promote_a_good_candidate_once(make_router: RouterFactory, make_model: ModelFactory,
                                                           redis: RedisServer, tmp_path: Path) -> None:
    v1, twin = await make_model(version="v1"), await make_model(version="v1", seed=3)
    backends = {"v1": v1, "v2": twin}
    members = await start_members(make_router, tmp_path, 2, backends, rollout_route(), redis)
    # the third with two worker processes: four processes in the cluster, three admin addresses
    members.append(await make_router({**member_config(tmp_path, 2, backends, rollout_route(), redis.url),
                                      "workers": 2}, name="m2"))
    async with aiohttp.ClientSession() as s:
        await eventually(lambda: _members(s, members[0], 4), "four processes in the member list")
        stop, failures = asyncio.Event(), []
        load = asyncio.create_task(traffic(s, members, stop, failures))
        try:
            seen = await watch_versions(s, members, {"promoted", "rolled_back", "paused"})
        finally:
            stop.set()
            await load
        assert seen[-1] == ("promoted", 100.0), seen  # (the decision log below shows each step)
        assert not failures, failures[:5]
    log = [e for e in decision_log(redis) if e["route"] == "fraud"]
    moves = [e for e in log if e["action"] in ("advance", "promote")]
    assert [e["action"] for e in moves] == ["advance", "promote"], moves
    steps = [e["step"] for e in moves]
    assert steps == sorted(set(steps)), steps
    # the evidence of each decision was summed over the members: more than any one of them served
    assert all(e["evidence"]["comparisons"] >= 50 for e in moves)


def split_route() -> list[dict[str, Any]]:
    return [{"name": "fraud", "match": {"path_prefix": "/v1/models/fraud"}, "primary": "v1", "candidate": "v2",
             "split": {"candidate_percent": 0}}]


async def post(s: aiohttp.ClientSession, url: str, body: Any = None) -> tuple[int, Any]:
    async with s.post(url, json=body, headers=AUTH) as r:
        return r.status, await r.json()


async def test_operator_actions_on_any_member_take_effect_everywhere(
        make_router: RouterFactory, make_model: ModelFactory, redis: RedisServer, tmp_path: Path) -> None:
    v1, v2 = await make_model(version="v1"), await make_model(version="v1", seed=3)
    routes = rollout_route(approval=True, steps=[0, 50, 100], min_samples=10_000)
    routes.append({"name": "plain", "match": {"path_prefix": "/plain"}, "primary": "v1", "candidate": "v2"})
    a, b, c = await start_members(make_router, tmp_path, 3, {"v1": v1, "v2": v2}, routes, redis)
    async with aiohttp.ClientSession() as s:
        await leader_of(s, [a, b, c])
        await all_agree(s, [a, b, c], lambda r: r["rollout"]["phase"] == "shadowing", "every member shadowing")
        # a rollback sent to B is applied by A and C
        status, body = await post(s, b.admin + "/-/routes/fraud/rollback")
        assert status == 200 and body["phase"] == "rolled_back", body
        await all_agree(s, [a, b, c], lambda r: r["rollout"]["phase"] == "rolled_back", "rolled back everywhere")
        # the same 409 rules on every member: nothing to roll back any more
        status, body = await post(s, c.admin + "/-/routes/fraud/rollback")
        assert status == 409 and "error" in body, body
        status, body = await post(s, a.admin + "/-/routes/fraud/restart")
        assert status == 200 and body["phase"] == "shadowing"
        await all_agree(s, [a, b, c], lambda r: r["rollout"]["phase"] == "shadowing", "restarted everywhere")
        # a split set on A is served by B (and C)
        status, body = await post(s, a.admin + "/-/routes/plain/split", {"candidate_percent": 100})
        assert status == 200, body

        async def plain_split(r: RouterProcess) -> float:
            return float((await route(s, r, "plain"))["candidate_percent"])
        await eventually(lambda: _all_equal([plain_split(m) for m in (a, b, c)], 100.0), "the split on every member",
                         timeout=APPLY_S)
        split_version = body["cluster_version"]
        assert split_version >= 3  # rollback, restart, split (and the leader's logged holds)
        versions = [(await get_json(s, m.admin + "/-/status"))["cluster"]["applied_version"] for m in (a, b, c)]
        assert min(versions) >= split_version, versions  # every member applies the split's version or later
        info = await cluster(s, b)
        assert info["store"]["up"] and len(info["members"]) == 3 and info["lease"]["holder"]
        for m in (b, c):
            async with s.get(m.url + "/plain") as resp:
                assert resp.headers["X-Model-Backend"] == "v2"  # the model answers 404: any path but its own
    log = [e for e in decision_log(redis) if e["route"] == "fraud" and e["actor"] == "operator"]
    assert [e["action"] for e in log] == ["rollback", "restart"], log


async def _all_equal(values: list[Awaitable[float]], expected: float) -> bool:
    return all([await v == expected for v in values])


async def test_killed_leader_is_replaced_and_the_step_continues(
        make_router: RouterFactory, make_model: ModelFactory, redis: RedisServer, tmp_path: Path) -> None:
    v1, twin = await make_model(version="v1"), await make_model(version="v1", seed=3)
    routes = rollout_route(min_samples=1_000_000)  # the step never completes: only its evidence grows
    members = await start_members(make_router, tmp_path, 3, {"v1": v1, "v2": twin}, routes, redis, lease="2s")
    async with aiohttp.ClientSession() as s:
        leader = await leader_of(s, members)
        others = [m for m in members if m is not leader]
        stop, failures = asyncio.Event(), []
        load = asyncio.create_task(traffic(s, others, stop, failures))
        try:
            async def comparisons(m: RouterProcess) -> int:
                return int((await route(s, m))["rollout"]["window"]["comparisons"])
            await eventually(lambda: _at_least(comparisons(others[0]), 30), "evidence in the current step")
            before = await route(s, others[0])
            assert leader.proc is not None
            leader.proc.kill()  # SIGKILL: no goodbye, the lease must expire
            leader.proc.wait()
            leader.stop()
            # within lease + 1 s (2 s of slack for a loaded test machine)
            new = await leader_of(s, others, timeout=2 + 1 + 2)
            info = (await route(s, new))["rollout"]
            assert info["step_index"] == before["rollout"]["step_index"]
            assert info["step_started_at"] == before["rollout"]["step_started_at"]  # the same step, not step 0 again
            assert info["window"]["comparisons"] >= before["rollout"]["window"]["comparisons"]
            epochs = [(await cluster(s, m))["lease"]["epoch"] for m in others]
            assert epochs[0] == epochs[1] >= 2
        finally:
            stop.set()
            await load
        assert not failures, failures[:5]


async def _at_least(value: Awaitable[int], n: int) -> bool:
    return await value >= n


async def metric(s: aiohttp.ClientSession, r: RouterProcess, name: str, **labels: str) -> float | None:
    async with s.get(r.admin + "/metrics") as resp:
        text = await resp.text()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    return None


async def test_redis_stopped_under_traffic_fails_static(make_router: RouterFactory, make_model: ModelFactory,
                                                        redis: RedisServer, tmp_path: Path) -> None:
    v1, twin = await make_model(version="v1"), await make_model(version="v1", seed=3)
    members = await start_members(make_router, tmp_path, 2, {"v1": v1, "v2": twin}, rollout_route(), redis)
    assert redis.proc is not None
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as s:
        await leader_of(s, members)
        stop, failures = asyncio.Event(), []
        load = asyncio.create_task(traffic(s, members, stop, failures, clients=2))
        try:
            redis.proc.send_signal(signal.SIGSTOP)  # Redis stops answering: every call times out
            try:
                async def store_down() -> bool:
                    return all([await metric(s, m, "router_cluster_store_up") == 0 for m in members])
                await eventually(store_down, "router_cluster_store_up 0 on every member")
                # 5 s of traffic without Redis: over twice the 2 s lease, so any leader has lost it
                deadline = asyncio.get_running_loop().time() + 5
                while asyncio.get_running_loop().time() < deadline:
                    for m in members:
                        info = await route(s, m)
                        assert (info["rollout"]["phase"], info["candidate_percent"]) == ("shadowing", 0), info
                    await asyncio.sleep(0.25)
                assert all([not (await cluster(s, m))["leader"] for m in members])
            finally:
                redis.proc.send_signal(signal.SIGCONT)
            # decisions resume, on the evidence counted locally meanwhile and flushed now
            await eventually(lambda: _phase_is(s, members[0], "promoted"), "the rollout to resume and promote",
                             timeout=60, step=0.2)
        finally:
            stop.set()
            await load
        assert not failures, failures[:5]
        assert all([await metric(s, m, "router_cluster_store_up") == 1 for m in members])


async def _phase_is(s: aiohttp.ClientSession, r: RouterProcess, phase: str) -> bool:
    return bool((await route(s, r))["rollout"]["phase"] == phase)


async def test_a_leader_paused_past_its_lease_cannot_write(make_router: RouterFactory, make_model: ModelFactory,
                                                           redis: RedisServer, tmp_path: Path) -> None:
    v1, twin = await make_model(version="v1"), await make_model(version="v1", seed=3)
    routes = rollout_route(approval=True, min_samples=1_000_000)
    members = await start_members(make_router, tmp_path, 2, {"v1": v1, "v2": twin}, routes, redis, lease="1s")
    async with aiohttp.ClientSession() as s:
        old = await leader_of(s, members)
        other = next(m for m in members if m is not old)
        old_id = (await cluster(s, old))["member"]
        stopped_at = time.time()
        old.signal(signal.SIGSTOP)
        try:
            await eventually(lambda: _is_leader(s, other), "the other member to take the lease")
            # the new leader's decisions move on while the old one sleeps
            status, _ = await post(s, other.admin + "/-/routes/fraud/pause")
            assert status == 200
        finally:
            old.signal(signal.SIGCONT)
        # woken up, the old leader finds the lease gone; whatever it wrote meanwhile was refused
        await eventually(lambda: _not_leader(s, old), "the old leader to step down")
        await all_agree(s, members, lambda r: r["rollout"]["phase"] == "paused", "paused on both members")
        info = await cluster(s, old)
        assert info["lease"]["holder"] == (await cluster(s, other))["member"]
    old.stop()
    output = "".join(old.output)
    assert "lost the lease" in output or "fenced" in output, output[-2000:]
    late = [e for e in decision_log(redis) if e["member"] == old_id and e["time"] >= stopped_at]
    assert not late, late  # nothing the old leader decided after its pause reached the shared log


async def _is_leader(s: aiohttp.ClientSession, r: RouterProcess) -> bool:
    return bool((await cluster(s, r))["leader"])


async def _not_leader(s: aiohttp.ClientSession, r: RouterProcess) -> bool:
    return not (await cluster(s, r))["leader"]


async def test_a_member_started_without_redis_serves_the_yaml_and_joins_later(
        make_router: RouterFactory, make_model: ModelFactory, tmp_path: Path) -> None:
    v1, v2 = await make_model(version="v1"), await make_model(version="v1", seed=3)
    port = free_port()
    later = RedisServer(tmp_path / "redis-later", port)
    later.dir.mkdir()
    routes = rollout_route(approval=True, min_samples=1_000_000)
    r = await make_router(member_config(tmp_path, 0, {"v1": v1, "v2": v2}, routes, f"redis://127.0.0.1:{port}/0"))
    try:
        async with aiohttp.ClientSession() as s:
            async with s.post(r.url + "/v1/models/fraud:predict", json={"instances": [[1, 2, 3, 4]]}) as resp:
                assert resp.status == 200 and resp.headers["X-Model-Backend"] == "v1"
            info = await cluster(s, r)
            assert not info["leader"] and not info["store"]["up"] and "Connect" in info["store"]["error"]
            status, body = await post(s, r.admin + "/-/routes/fraud/pause")
            assert status == 503 and "unreachable" in body["error"]["message"]
            later.start()
            await eventually(lambda: _is_leader(s, r), "the member to join and lead once Redis is up")
            status, body = await post(s, r.admin + "/-/routes/fraud/pause")
            assert status == 200, body
    finally:
        later.stop()


async def test_a_wrong_redis_url_is_reported(make_router: RouterFactory, make_backend: Any, tmp_path: Path) -> None:
    not_redis = await make_backend("http")  # an HTTP server where Redis should be
    routes = split_route()
    r = await make_router(member_config(tmp_path, 0, {"v1": not_redis.url, "v2": not_redis.url}, routes,
                                        not_redis.url.replace("http://", "redis://") + "/0"))
    async with aiohttp.ClientSession() as s:
        info = await eventually(lambda: _store_error(s, r), "the store error in /-/cluster")
        assert not info["store"]["up"]
        async with s.get(r.url + "/v1/models/fraud") as resp:
            assert resp.status == 200  # requests never depend on Redis
        status, body = await post(s, r.admin + "/-/routes/fraud/split", {"candidate_percent": 10})
        assert status == 503 and "error" in body


async def _store_error(s: aiohttp.ClientSession, r: RouterProcess) -> dict[str, Any] | None:
    info = await cluster(s, r)
    return info if info["store"]["error"] and info["store"]["error"] != "not connected yet" else None


async def test_feedback_posted_to_one_member_joins_a_prediction_served_by_another(
        make_router: RouterFactory, make_model: ModelFactory, redis: RedisServer, tmp_path: Path) -> None:
    v1 = await make_model(version="v1")
    routes = [{"name": "fraud", "match": {"path_prefix": "/v1/models/fraud"}, "primary": "v1"}]
    a, b = [await make_router({**member_config(tmp_path, i, {"v1": v1}, routes, redis.url),
                               "monitoring": {"feedback": {"retention": "1h"}}}, name=f"m{i}") for i in range(2)]
    async with aiohttp.ClientSession() as s:
        labels = {}
        for i in range(5):
            async with s.post(b.url + "/v1/models/fraud:predict", json={"instances": [[i, 1, 2, 3]]},
                              headers={"X-Request-Id": f"from-b-{i}"}) as resp:
                assert resp.status == 200
                # Feedback joins on the router's own id (a client's id could claim another's prediction).
                labels[resp.headers["X-Router-Request-Id"]] = (await resp.json())["predictions"][0]["label"]
        items = [{"request_id": rid, "label": label} for rid, label in labels.items()]

        async def joined() -> dict[str, Any] | None:
            async with s.post(a.admin + "/-/feedback", json=items[:1], headers=AUTH) as resp:
                body = await resp.json()
                return body if resp.status == 200 else None  # 404 until B has shared its predictions
        await eventually(joined, "feedback on A to join B's prediction")
        status, body = await post(s, a.admin + "/-/feedback", items[1:])
        assert status == 200 and body["accepted"] == 4, body
        status, body = await post(s, a.admin + "/-/feedback", items[:1])
        assert status == 409, body  # answered already: the same rules as on one router
        quality = await get_json(s, a.admin + "/-/routes/fraud/quality")
        assert quality["backends"]["v1"]["labelled"] == 5, quality


async def test_shadow_reports_and_diffs_cover_every_member(make_router: RouterFactory, make_model: ModelFactory,
                                                           redis: RedisServer, tmp_path: Path) -> None:
    v1, bad = await make_model(version="v1"), await make_model(version="v2", perturb=3.0, seed=5)
    # max_concurrency: pacing never drops a copy, so each member mirrors and compares all 15 of its requests
    routes = [{"name": "fraud", "match": {"path_prefix": "/v1/models/fraud"}, "primary": "v1",
               "shadow": {"backend": "v2", "max_concurrency": 100_000,
                          "compare": {"format": "kserve-v1", "paths": ["$.predictions[*].label"]}}}]
    a, b = await start_members(make_router, tmp_path, 2, {"v1": v1, "v2": bad}, routes, redis)
    async with aiohttp.ClientSession() as s:
        for m, prefix in ((a, "on-a"), (b, "on-b")):
            for i in range(15):
                async with s.post(m.url + "/v1/models/fraud:predict", json={"instances": [[i * 0.3, 1, -2, i]]},
                                  headers={"X-Request-Id": f"{prefix}-{i}"}) as resp:
                    assert resp.status == 200

        async def both_counted(m: RouterProcess) -> dict[str, Any] | None:
            report = await get_json(s, m.admin + "/-/routes/fraud/shadow")
            return report if report["mirrored"] == 30 and report["compared"] == 30 else None
        for m in (a, b):
            report = await eventually(lambda m=m: both_counted(m), f"{m.admin}: the shadow report of both members")
            assert report["agreement_raw"]["n"] == 30
        diffs = (await get_json(s, a.admin + "/-/routes/fraud/diffs?limit=50"))["diffs"]
        served_by = {d["request_id"].split("-")[1] for d in diffs}
        assert served_by == {"a", "b"}, diffs  # disagreements seen by B show on A
    # each member's /metrics stays its own (Prometheus sums the members)
    async with aiohttp.ClientSession() as s:
        assert await metric(s, a, "router_shadow_requests_total", route="fraud", result="mirrored") == 15.0


async def test_three_members_roll_a_bad_candidate_back_once(make_router: RouterFactory, make_model: ModelFactory,
                                                            redis: RedisServer, tmp_path: Path) -> None:
    v1, bad = await make_model(version="v1"), await make_model(version="v2", perturb=3.0, seed=5)
    members = await start_members(make_router, tmp_path, 3, {"v1": v1, "v2": bad}, rollout_route(), redis)
    async with aiohttp.ClientSession() as s:
        await leader_of(s, members)
        stop, failures = asyncio.Event(), []
        load = asyncio.create_task(traffic(s, members, stop, failures))
        try:
            await eventually(lambda: _phase_is(s, members[1], "rolled_back"), "the rollback", timeout=90, step=0.1)
            await all_agree(s, members, lambda r: (r["rollout"]["phase"], r["candidate_percent"]) == ("rolled_back", 0),
                            "every member rolled back, primary only")
            info = await get_json(s, members[2].admin + "/-/routes/fraud/rollout?tail=200")
        finally:
            stop.set()
            await load
        assert not failures, failures[:5]
    rollbacks = [e for e in decision_log(redis) if e["action"] == "rollback"]
    assert len(rollbacks) == 1 and "agreement fail" in rollbacks[0]["reason"], rollbacks
    assert [e for e in info["log"] if e["action"] == "rollback"] == rollbacks  # the shared log, on any member
