"""Model monitoring end to end: prediction log, feedback loop, anomaly alerts, on a real router."""

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


def fraud_route(**extra: Any) -> list[dict[str, Any]]:
    return [{"name": "fraud", "match": {"path_prefix": "/v1/models/fraud"}, "primary": "v1", **extra}]


async def predict(s: aiohttp.ClientSession, url: str, rng: random.Random, rid: str | None = None) -> tuple[int, dict[str, Any]]:
    headers = {"X-Request-Id": rid} if rid else {}
    body = {"instances": [[rng.gauss(0, 1) for _ in range(4)]]}
    async with s.post(url + "/v1/models/fraud:predict", json=body, headers=headers) as r:
        return r.status, await r.json()


async def test_prediction_log_with_redaction_and_joined_shadow(
        make_router: RouterFactory, make_model: ModelFactory, tmp_path: Path) -> None:
    v1, v2 = await make_model(version="v1"), await make_model(version="v2", seed=4)
    log_path = tmp_path / "predictions.jsonl"
    cfg = base_config(tmp_path, {"v1": v1, "v2": v2}, fraud_route(shadow={"backend": "v2"}),
                      monitoring={"prediction_log": {"path": str(log_path), "include_bodies": True,
                                                     "redact": ["$.instances"]}})
    r = await make_router(cfg)
    rng = random.Random(2)
    async with aiohttp.ClientSession() as s:
        for i in range(20):
            assert (await predict(s, r.url, rng, f"log-{i}"))[0] == 200
    r.stop()  # drains the monitor's queue and flushes the log
    records = [json.loads(line) for line in log_path.read_text().splitlines()]
    # one each, under the router's own id, with the client's id beside it
    assert sorted(rec["client_request_id"] for rec in records) == sorted(f"log-{i}" for i in range(20))
    assert len({rec["request_id"] for rec in records}) == 20 and not any(rec["request_id"].startswith("log-")
                                                                          for rec in records)
    rec = records[0]
    assert rec["route"] == "fraud" and rec["backend"] == "v1" and rec["status"] == 200 and rec["latency_s"] > 0
    assert rec["request_body"]["instances"] == "[REDACTED]"
    assert rec["response_body"]["predictions"][0]["label"]
    assert rec["shadow"]["backend"] == "v2" and rec["shadow"]["status"] == 200
    assert rec["shadow"]["response_body"]["predictions"][0]["label"]


async def test_feedback_loop_accuracy_survives_restart(
        make_router: RouterFactory, make_model: ModelFactory, tmp_path: Path) -> None:
    v1 = await make_model(version="v1")
    cfg = base_config(tmp_path, {"v1": v1}, fraud_route(), monitoring={"feedback": {"retention": "1h"}})
    r = await make_router(cfg)
    rng = random.Random(3)
    async with aiohttp.ClientSession() as s:
        predicted = {}
        for i in range(10):
            body = {"instances": [[rng.gauss(0, 1) for _ in range(4)]]}
            async with s.post(r.url + "/v1/models/fraud:predict", json=body, headers={"X-Request-Id": f"fb-{i}"}) as resp:
                assert resp.status == 200 and resp.headers["X-Request-Id"] == f"fb-{i}"
                predicted[resp.headers["X-Router-Request-Id"]] = (await resp.json())["predictions"][0]["label"]
        # Feedback joins on the router's own id: the id a client chose claims nothing.
        async with s.post(r.admin + "/-/feedback", json={"request_id": "fb-0", "label": "x"}, headers=AUTH) as resp:
            assert resp.status == 404
        # 7 right, 3 wrong
        items = [{"request_id": rid, "label": label if i < 7 else label + "-not"}
                 for i, (rid, label) in enumerate(predicted.items())]
        async with s.post(r.admin + "/-/feedback", json=items[:6], headers=AUTH) as resp:
            assert resp.status == 200 and (await resp.json())["accepted"] == 6
        async with s.post(r.admin + "/-/feedback", json=items[:1], headers=AUTH) as resp:
            assert resp.status == 409 and (await resp.json())["duplicate"] == 1
        async with s.post(r.admin + "/-/feedback", json={"request_id": "nope", "label": "x"}, headers=AUTH) as resp:
            assert resp.status == 404 and (await resp.json())["unknown_request_id"] == 1
        async with s.post(r.admin + "/-/feedback", data=b"{not json", headers=AUTH) as resp:
            assert resp.status == 400 and "error" in await resp.json()
        async with s.post(r.admin + "/-/feedback", json=items[6:]) as resp:
            assert resp.status == 401
        r.stop()
        r = await make_router(cfg)  # pending predictions and aggregates survive
        async with s.post(r.admin + "/-/feedback", json=items[6:], headers=AUTH) as resp:
            assert resp.status == 200 and (await resp.json())["accepted"] == 4
        async with s.get(r.admin + "/-/routes/fraud/quality") as resp:
            quality = await resp.json()
        async with s.get(r.admin + "/metrics") as resp:
            metrics = await resp.text()
    v1q = quality["backends"]["v1"]
    assert v1q["labelled"] == 10 and v1q["correct"] == 7
    assert abs(v1q["accuracy"]["rate"] - 0.7) < 1e-9 and v1q["accuracy"]["low"] < 0.7 < v1q["accuracy"]["high"]
    assert 'router_feedback_accuracy{backend="v1",route="fraud"} 0.7' in metrics
    assert 'router_feedback_total{result="malformed"} 0.0' in metrics  # the counts reset with the process


async def test_alerts_latency_errors_and_drift_but_not_steady_traffic(
        make_router: RouterFactory, make_model: ModelFactory, make_backend: BackendFactory, tmp_path: Path) -> None:
    v1 = await make_model(version="v1", latency_ms=2, jitter_ms=1)
    received: list[dict[str, Any]] = []

    async def hook(request: web.Request) -> web.StreamResponse:
        received.append(await request.json())
        return web.json_response({})

    hook_url = (await make_backend("hook", hook)).url + "/hook"
    alerts = {"bucket": "250ms", "window": "1s", "baseline": "5s", "min_samples": 20, "min_baseline_samples": 100,
              "drift_window": "2s", "reference": "10s", "drift_min_samples": 60, "cooldown": "30s"}
    rollout = {"steps": [0, 100], "interval": "1h", "min_samples": 100000, "notify": hook_url}
    cfg = base_config(tmp_path, {"v1": v1, "v2": v1}, fraud_route(candidate="v2", rollout=rollout),
                      monitoring={"alerts": alerts})
    r = await make_router(cfg)
    rng = random.Random(4)
    stop = asyncio.Event()

    async def traffic(s: aiohttp.ClientSession) -> None:
        while not stop.is_set():
            await predict(s, r.url, rng)

    async def control(s: aiohttp.ClientSession, **knobs: Any) -> None:
        async with s.post(v1 + "/-/control", json=knobs) as resp:
            assert resp.status == 200

    async def served(s: aiohttp.ClientSession) -> float:
        async with s.get(r.admin + "/metrics") as resp:
            text = await resp.text()
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith("router_requests_total{"))

    async def wait_for(s: aiohttp.ClientSession, kind: str) -> dict[str, Any]:
        async def found() -> dict[str, Any] | None:
            async with s.get(r.admin + "/-/alerts") as resp:
                return next((a for a in (await resp.json())["alerts"] if a["kind"] == kind), None)
        alert: dict[str, Any] = await eventually(found, f"a {kind} alert", timeout=40, step=0.2)
        return alert

    async with aiohttp.ClientSession() as s:
        workers = [asyncio.create_task(traffic(s)) for _ in range(3)]
        try:
            # Steady traffic until the detector has a full baseline (5 s of it, and enough samples:
            # on a loaded machine 7 s may bring too few), then: no alert.
            started = asyncio.get_running_loop().time()

            async def baseline_full() -> bool:
                return asyncio.get_running_loop().time() - started >= 7 and await served(s) >= 600
            await eventually(baseline_full, "7 s and 600 requests of steady traffic", timeout=60, step=0.2)
            async with s.get(r.admin + "/-/alerts") as resp:
                assert (await resp.json())["alerts"] == []
            await control(s, latency_ms=60)
            latency = await wait_for(s, "latency_spike")
            await control(s, latency_ms=2, error_rate=0.5)
            errors = await wait_for(s, "error_spike")
            await control(s, error_rate=0.0, shift=6.0)
            drift = await wait_for(s, "drift")
        finally:
            stop.set()
            await asyncio.gather(*workers)
        async with s.get(r.admin + "/metrics") as resp:
            metrics = await resp.text()
    assert latency["backend"] == "v1" and latency["route"] == "fraud" and "p95" in latency["message"]
    assert errors["value"] > errors["baseline"]
    assert drift["kind"] == "drift"
    for kind in ("latency_spike", "error_spike", "drift"):
        assert f'router_alerts_total{{kind="{kind}"}} ' in metrics
    assert {a["alert"]["kind"] for a in received} >= {"latency_spike", "error_spike", "drift"}
