"""Automatic rollout end to end: a good candidate is promoted, a bad one rolled back; restarts resume."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from tests.helpers import TOKEN, BackendFactory, RouterFactory, base_config, eventually

ModelFactory = Callable[..., Awaitable[str]]
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def rollout_route(notify: str | None = None, **rollout: Any) -> list[dict[str, Any]]:
    policy: dict[str, Any] = {"steps": [0, 50, 100], "interval": "300ms", "min_samples": 50, "max_duration": "2m",
                              "gates": {"min_agreement": 0.8, "max_latency_ratio": None,
                                        "max_error_rate_increase": 0.25},
                              "confidence": 0.99, **rollout}
    if notify:
        policy["notify"] = notify
    return [{"name": "fraud", "match": {"path_prefix": "/v1/models/fraud"}, "primary": "v1", "candidate": "v2",
             "shadow": {"backend": "v2", "compare": {"format": "kserve-v1", "paths": ["$.predictions[*].label"]}},
             "rollout": policy}]


async def rollout(s: aiohttp.ClientSession, admin: str) -> dict[str, Any]:
    async with s.get(admin + "/-/routes/fraud/rollout?tail=50") as r:
        assert r.status == 200
        return dict(await r.json())


async def drive(s: aiohttp.ClientSession, url: str, admin: str, until: set[str], limit_s: float = 60) -> dict[str, Any]:
    """Send predictions from a few clients until the rollout reaches one of the phases in `until`."""
    rng = random.Random(11)
    done = asyncio.Event()

    async def client() -> None:
        while not done.is_set():
            body = {"instances": [[rng.gauss(0, 1) for _ in range(4)]]}
            async with s.post(url + "/v1/models/fraud:predict", json=body) as r:
                assert r.status == 200
                await r.read()

    clients = [asyncio.create_task(client()) for _ in range(4)]
    try:
        async with asyncio.timeout(limit_s):
            while True:
                info = await rollout(s, admin)
                if info["phase"] in until:
                    return info
                await asyncio.sleep(0.1)
    finally:
        done.set()
        await asyncio.gather(*clients)


async def hook(make_backend: BackendFactory) -> tuple[str, list[dict[str, Any]]]:
    received: list[dict[str, Any]] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        received.append(await request.json())
        return web.json_response({"ok": True})

    b = await make_backend("hook", handler)
    return b.url + "/hook", received


async def test_good_candidate_is_promoted(make_router: RouterFactory, make_model: ModelFactory,
                                          make_backend: BackendFactory, tmp_path: Path) -> None:
    v1, twin = await make_model(version="v1"), await make_model(version="v1", seed=3)
    url, received = await hook(make_backend)
    r = await make_router(base_config(tmp_path, {"v1": v1, "v2": twin}, rollout_route(url)))
    async with aiohttp.ClientSession() as s:
        info = await rollout(s, r.admin)
        assert info["phase"] == "shadowing" and info["candidate_percent"] == 0
        info = await drive(s, r.url, r.admin, {"promoted", "rolled_back", "paused"})
        assert info["phase"] == "promoted" and info["candidate_percent"] == 100
        for _ in range(5):  # promoted: the candidate takes all traffic
            async with s.post(r.url + "/v1/models/fraud:predict", json={"instances": [[1, 2, 3, 4]]}) as resp:
                assert resp.headers["X-Model-Backend"] == "v2"
        async with s.post(r.admin + "/-/routes/fraud/resume", headers=AUTH) as resp:
            assert resp.status == 409  # nothing to resume
        async with s.post(r.admin + "/-/routes/fraud/split", json={"candidate_percent": 5}, headers=AUTH) as resp:
            assert resp.status == 409  # the rollout owns the split
    phases = [(e["from_phase"], e["phase"]) for e in received]
    assert ("shadowing", "progressing") in phases and ("progressing", "promoted") in phases
    log = [json.loads(line) for line in (tmp_path / "state" / "decisions.jsonl").read_text().splitlines()]
    advances = [e for e in log if e["action"] in ("advance", "promote")]
    assert len(advances) == 2
    for entry in advances:
        gate = {g["gate"]: g for g in entry["gates"]}
        assert gate["agreement"]["verdict"] == "pass" and gate["agreement"]["low"] >= 0.8
        assert entry["evidence"]["comparisons"] >= 50


async def test_bad_candidate_is_rolled_back_and_stays_there(make_router: RouterFactory, make_model: ModelFactory,
                                                            make_backend: BackendFactory, tmp_path: Path) -> None:
    v1, bad = await make_model(version="v1"), await make_model(version="v2", perturb=3.0, seed=5)
    url, received = await hook(make_backend)
    r = await make_router(base_config(tmp_path, {"v1": v1, "v2": bad}, rollout_route(url)))
    async with aiohttp.ClientSession() as s:
        info = await drive(s, r.url, r.admin, {"promoted", "rolled_back", "paused"})
        assert info["phase"] == "rolled_back" and info["candidate_percent"] == 0
        failed = [e for e in info["log"] if e["action"] == "rollback"]
        assert failed and "agreement fail" in failed[-1]["reason"]
        await asyncio.sleep(1.0)  # several more evaluations: no flapping
        assert (await rollout(s, r.admin))["phase"] == "rolled_back"
        async with s.post(r.url + "/v1/models/fraud:predict", json={"instances": [[1, 2, 3, 4]]}) as resp:
            assert resp.headers["X-Model-Backend"] == "v1"
        async with s.post(r.admin + "/-/routes/fraud/restart", headers=AUTH) as resp:
            assert resp.status == 200 and (await resp.json())["phase"] == "shadowing"  # only an operator
    await eventually(lambda: len(received) >= 2, "two webhook posts")  # posted in the background
    assert [e["phase"] for e in received] == ["rolled_back", "shadowing"]
    assert received[1]["actor"] == "operator"


async def test_restart_resumes_the_same_step_and_operator_approves(
        make_router: RouterFactory, make_model: ModelFactory, tmp_path: Path) -> None:
    v1, twin = await make_model(version="v1"), await make_model(version="v1", seed=3)
    cfg = base_config(tmp_path, {"v1": v1, "v2": twin}, rollout_route(approval=True))
    r = await make_router(cfg)
    async with aiohttp.ClientSession() as s:
        before = await drive(s, r.url, r.admin, {"awaiting_approval", "rolled_back", "paused"})
        assert before["phase"] == "awaiting_approval" and before["step_index"] == 1 and before["candidate_percent"] == 50
        r.stop()
        r = await make_router(cfg)
        after = await rollout(s, r.admin)
        assert (after["phase"], after["step_index"], after["step_started_at"]) == \
               (before["phase"], before["step_index"], before["step_started_at"])
        assert after["window"]["comparisons"] >= before["window"]["comparisons"] > 0
        async with s.get(r.admin + "/metrics") as resp:
            text = await resp.text()
        assert 'router_rollout_phase{phase="awaiting_approval",route="fraud"} 1.0' in text
        assert 'router_rollout_step{route="fraud"} 1.0' in text
        assert 'router_candidate_percent{route="fraud"} 50.0' in text
        async with s.post(r.admin + "/-/routes/fraud/promote") as resp:
            assert resp.status == 401
        async with s.post(r.admin + "/-/routes/fraud/promote", headers=AUTH) as resp:
            assert resp.status == 200 and (await resp.json())["phase"] == "promoted"
        log = (await rollout(s, r.admin))["log"]
        assert log[-1]["actor"] == "operator" and log[-1]["phase"] == "promoted"


async def test_corrupt_state_falls_back_to_primary(make_router: RouterFactory, make_model: ModelFactory,
                                                   tmp_path: Path) -> None:
    v1, twin = await make_model(version="v1"), await make_model(version="v1", seed=3)
    state = tmp_path / "state"
    state.mkdir()
    (state / "rollouts.json").write_text('{"fraud": {"phase": "promo')
    r = await make_router(base_config(tmp_path, {"v1": v1, "v2": twin}, rollout_route(steps=[50, 100])))
    async with aiohttp.ClientSession() as s:
        info = await rollout(s, r.admin)
        assert info["phase"] == "paused" and info["primary_only"] is True and info["candidate_percent"] == 0
        for _ in range(20):
            async with s.post(r.url + "/v1/models/fraud:predict", json={"instances": [[1, 2, 3, 4]]}) as resp:
                assert resp.status == 200 and resp.headers["X-Model-Backend"] == "v1"
        async with s.get(r.admin + "/-/status") as resp:
            status = await resp.json()
        async with s.post(r.admin + "/-/routes/fraud/resume", headers=AUTH) as resp:
            assert resp.status == 200
        info = await rollout(s, r.admin)
        assert info["phase"] == "progressing" and info["candidate_percent"] == 50
    assert "not valid JSON" in (status["rollout_problem"] or "")
    assert list(state.glob("rollouts.json.corrupt-*"))


async def test_reload_keeps_the_rollout_unless_primary_or_candidate_change(
        make_router: RouterFactory, make_model: ModelFactory, tmp_path: Path) -> None:
    v1, twin, other = await make_model(version="v1"), await make_model(version="v1", seed=3), await make_model()
    cfg = base_config(tmp_path, {"v1": v1, "v2": twin, "v3": other}, rollout_route(approval=True))
    r = await make_router(cfg)
    async with aiohttp.ClientSession() as s:
        before = await drive(s, r.url, r.admin, {"awaiting_approval", "rolled_back", "paused"})
        assert before["phase"] == "awaiting_approval"
        cfg["limits"]["request_timeout"] = "3s"  # an unrelated change
        r.write(cfg)
        async with s.post(r.admin + "/-/reload", headers=AUTH) as resp:
            assert resp.status == 200
        assert (await rollout(s, r.admin))["phase"] == "awaiting_approval"
        cfg["routes"][0]["candidate"] = "v3"
        cfg["routes"][0]["shadow"]["backend"] = "v3"
        r.write(cfg)
        async with s.post(r.admin + "/-/reload", headers=AUTH) as resp:
            assert resp.status == 200
        info = await rollout(s, r.admin)
        assert info["phase"] == "shadowing" and info["candidate"] == "v3" and info["candidate_percent"] == 0


async def test_canary_without_shadow_is_judged_on_live_errors(make_router: RouterFactory, make_model: ModelFactory,
                                                              tmp_path: Path) -> None:
    v1, failing = await make_model(version="v1"), await make_model(version="v2", error_rate=0.5, seed=9)
    routes = [{"name": "fraud", "match": {"path_prefix": "/v1/models/fraud"}, "primary": "v1", "candidate": "v2",
               "rollout": {"steps": [20, 100], "interval": "300ms", "min_samples": 30, "max_duration": "2m",
                           "gates": {"min_agreement": None, "max_latency_ratio": None,
                                     "max_error_rate_increase": 0.05}}}]
    r = await make_router(base_config(tmp_path, {"v1": v1, "v2": failing}, routes))
    rng = random.Random(5)
    async with aiohttp.ClientSession() as s:
        info = await rollout(s, r.admin)
        assert info["phase"] == "progressing" and info["candidate_percent"] == 20 and info["shadowed"] is False
        for _ in range(600):
            body = {"instances": [[rng.gauss(0, 1) for _ in range(4)]]}
            async with s.post(r.url + "/v1/models/fraud:predict", json=body) as resp:
                await resp.read()
            info = await rollout(s, r.admin) if rng.random() < 0.05 else info
            if info["phase"] == "rolled_back":
                break
        info = await rollout(s, r.admin)
    assert info["phase"] == "rolled_back", (info["window"], info["last_decision"]["reason"])
    failed = [e for e in info["log"] if e["action"] == "rollback"][-1]
    assert "error_rate fail" in failed["reason"] and failed["evidence"]["candidate"]["errors"] > 0


async def test_feedback_accuracy_gate_rolls_back_a_less_accurate_candidate(
        make_router: RouterFactory, make_model: ModelFactory, tmp_path: Path) -> None:
    v1, worse = await make_model(version="v1"), await make_model(version="v2", perturb=3.0, seed=8)
    routes = [{"name": "fraud", "match": {"path_prefix": "/v1/models/fraud"}, "primary": "v1", "candidate": "v2",
               "rollout": {"steps": [50, 100], "interval": "300ms", "min_samples": 30, "max_duration": "2m",
                           "gates": {"min_agreement": None, "max_latency_ratio": None,
                                     "max_error_rate_increase": None, "min_accuracy_delta": -0.05}}}]
    r = await make_router(base_config(tmp_path, {"v1": v1, "v2": worse}, routes,
                                      monitoring={"feedback": {"retention": "1h"}}))
    rng = random.Random(6)
    async with aiohttp.ClientSession() as s:
        truth = []
        for i in range(400):
            body = {"instances": [[rng.gauss(0, 1) for _ in range(4)]]}
            async with s.post(r.url + "/v1/models/fraud:predict", json=body, headers={"X-Request-Id": f"q{i}"}) as resp:
                label = (await resp.json())["predictions"][0]["label"]
                backend = resp.headers["X-Model-Backend"]
                rid = resp.headers["X-Router-Request-Id"]  # feedback joins on the router's own id
            async with s.post(v1 + "/v1/models/fraud:predict", json=body) as resp:
                right = (await resp.json())["predictions"][0]["label"]  # the truth: what v1 says
            truth.append({"request_id": rid, "label": right})
            assert backend in ("v1", "v2") and label
        async with s.post(r.admin + "/-/feedback", json=truth, headers=AUTH) as resp:
            assert resp.status == 200 and (await resp.json())["accepted"] == 400
        for _ in range(50):
            info = await rollout(s, r.admin)
            if info["phase"] != "progressing":
                break
            await asyncio.sleep(0.1)
        async with s.get(r.admin + "/-/routes/fraud/quality") as resp:
            quality = await resp.json()
    assert info["phase"] == "rolled_back", info["last_decision"]["reason"]
    assert "accuracy fail" in info["last_decision"]["reason"]
    assert quality["backends"]["v1"]["accuracy"]["rate"] == 1.0
    assert quality["backends"]["v2"]["accuracy"]["rate"] < 0.9
    assert quality["accuracy_delta"] is not None
