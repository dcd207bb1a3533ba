"""Feedback on the outputs real classifiers send (issue 15, items 3 and 4), with fake backends.

Integer classes (KServe V1, MLflow), MLServer's `predict` / `predict_proba` outputs, outputs the
router cannot read (said in the feedback answer), and the shadow's predictions scored beside the
live ones, so that a shadow-only rollout step can pass its accuracy gate.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from router.analysis.predictions import read_prediction
from tests.helpers import TOKEN, BackendFactory, RouterFactory, base_config

AUTH = {"Authorization": f"Bearer {TOKEN}"}
Answer = Callable[[list[float]], dict[str, Any]]


def v1_ints(row: list[float]) -> dict[str, Any]:
    return {"predictions": [int(row[0] > 0)]}


def mlserver(row: list[float]) -> dict[str, Any]:
    p = 0.9 if row[0] > 0 else 0.2
    return {"model_name": "clf", "outputs": [
        {"name": "predict", "shape": [1, 1], "datatype": "INT64", "data": [int(p > 0.5)]},
        {"name": "predict_proba", "shape": [1, 2], "datatype": "FP64", "data": [1 - p, p]}]}


def unknown_outputs(row: list[float]) -> dict[str, Any]:
    return {"outputs": [{"name": "foo", "shape": [1], "datatype": "FP32", "data": [row[0]]},
                        {"name": "bar", "shape": [1], "datatype": "FP32", "data": [1.0]}]}


def serve(answer: Answer) -> Callable[[web.Request], Any]:
    async def handle(request: web.Request) -> web.StreamResponse:
        return web.json_response(answer((await request.json())["row"]))
    return handle


@pytest.mark.parametrize(("body", "kind", "expected"), [
    ({"predictions": [0]}, "auto", (0.0, "number")),  # a class or a value: the feedback decides
    ({"predictions": [0]}, "label", ("0", "label")),
    ({"predictions": [3]}, "value", (3.0, "value")),
    ({"predictions": [2.5]}, "auto", (2.5, "value")),
    ({"predictions": ["cat"]}, "auto", ("cat", "label")),
    ({"predictions": [[0.1, 0.7, 0.2]]}, "auto", ("1", "label")),
    ({"predictions": [{"label": "x", "scores": [0.3]}]}, "auto", ("x", "label")),
    ([1, 0], "auto", (1.0, "number")),  # MLflow 1.x: the bare list
    (mlserver([1.0]), "auto", ("1", "label")),
    (mlserver([-1.0]), "scores", ("0", "label")),
    ({"outputs": [{"name": "predict", "shape": [1], "datatype": "INT64", "data": [2]}]}, "auto", (2.0, "number")),
    ({"outputs": [{"name": "predict", "shape": [1], "datatype": "FP64", "data": [0.5]}]}, "auto", (0.5, "value")),
    (unknown_outputs([1.0]), "auto", (None, "none")),
    ({"choices": []}, "auto", (None, "none")),
])
def test_prediction_kinds(body: Any, kind: str, expected: tuple[object, str]) -> None:
    read = read_prediction(json.dumps(body).encode(), kind)
    assert (read.prediction, read.kind) == expected
    assert (read.note is None) == (read.kind != "none")


def route(**extra: Any) -> list[dict[str, Any]]:
    return [{"name": "clf", "match": {"path_prefix": "/m/"}, "primary": "v1", **extra}]


async def predict_all(s: aiohttp.ClientSession, url: str, n: int, seed: int = 3) -> list[tuple[str, list[float]]]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        row = [rng.gauss(0, 1)]
        async with s.post(url + "/m/infer", json={"row": row}) as resp:
            assert resp.status == 200
            await resp.read()
            out.append((resp.headers["X-Router-Request-Id"], row))
    return out


async def feedback(s: aiohttp.ClientSession, admin: str, items: list[dict[str, Any]]) -> tuple[int, dict[str, Any]]:
    async with s.post(admin + "/-/feedback", json=items, headers=AUTH) as resp:
        return resp.status, await resp.json()


async def quality(s: aiohttp.ClientSession, admin: str) -> dict[str, Any]:
    async with s.get(admin + "/-/routes/clf/quality") as resp:
        return dict((await resp.json())["backends"])


@pytest.mark.parametrize("answer", [v1_ints, mlserver], ids=["kserve-v1-integers", "mlserver-outputs"])
async def test_classifier_outputs_are_scored_exactly(
        make_router: RouterFactory, make_backend: BackendFactory, tmp_path: Path, answer: Answer) -> None:
    v1 = await make_backend("v1", serve(answer))
    r = await make_router(base_config(tmp_path, {"v1": v1.url}, route(), monitoring={"feedback": {}}))
    async with aiohttp.ClientSession() as s:
        predicted = await predict_all(s, r.url, 40)
        truth = [int(row[0] > 0.5) for _, row in predicted]  # the model's threshold is 0: some are wrong
        status, answer_json = await feedback(s, r.admin, [{"request_id": rid, "label": t}
                                                          for (rid, _), t in zip(predicted, truth, strict=True)])
        scores = (await quality(s, r.admin))["v1"]
    right = sum((row[0] > 0) == bool(t) for (_, row), t in zip(predicted, truth, strict=True))
    assert status == 200 and answer_json["accepted"] == 40
    assert scores["labelled"] == 40 and scores["correct"] == right < 40 and scores["unscored"] == 0


async def test_a_route_can_declare_its_integers_values(
        make_router: RouterFactory, make_backend: BackendFactory, tmp_path: Path) -> None:
    v1 = await make_backend("v1", serve(v1_ints))
    r = await make_router(base_config(tmp_path, {"v1": v1.url}, route(prediction="value"),
                                      monitoring={"feedback": {}}))
    async with aiohttp.ClientSession() as s:
        predicted = await predict_all(s, r.url, 10)
        status, result = await feedback(s, r.admin, [{"request_id": rid, "label": "1"} for rid, _ in predicted])
        assert status == 422 and result["invalid"] == 10  # a class for a value: refused, and why
        assert "predicted a value" in result["items"][0]["outcome"]
        status, _ = await feedback(s, r.admin, [{"request_id": rid, "value": 0.5} for rid, _ in predicted])
        scores = (await quality(s, r.admin))["v1"]
    assert status == 200 and scores["valued"] == 10 and scores["mae"] == 0.5


async def test_feedback_that_cannot_be_scored_is_not_just_accepted(
        make_router: RouterFactory, make_backend: BackendFactory, tmp_path: Path) -> None:
    v1 = await make_backend("v1", serve(unknown_outputs))
    r = await make_router(base_config(tmp_path, {"v1": v1.url}, route(), monitoring={"feedback": {}}))
    async with aiohttp.ClientSession() as s:
        predicted = await predict_all(s, r.url, 3)
        status, result = await feedback(s, r.admin, [{"request_id": rid, "label": 1} for rid, _ in predicted])
        scores = (await quality(s, r.admin))["v1"]
    assert status == 422 and result["accepted"] == 0 and result["unscorable"] == 3
    outcome = result["items"][0]["outcome"]
    assert outcome.startswith("unscorable: ") and "'bar', 'foo'" in outcome and "prediction:" in outcome
    assert scores["unscored"] == 3


async def test_a_shadow_only_step_gets_accuracy_evidence(
        make_router: RouterFactory, make_backend: BackendFactory, tmp_path: Path) -> None:
    v1, v2 = await make_backend("v1", serve(v1_ints)), await make_backend("v2", serve(v1_ints))
    # max_concurrency: pacing never drops a copy, so all 60 predictions are scored as the shadow's too
    routes = route(candidate="v2", shadow={"backend": "v2", "max_concurrency": 100_000},
                   rollout={"steps": [0, 100], "interval": "200ms", "min_samples": 30, "max_duration": "2m",
                            "gates": {"min_agreement": None, "max_latency_ratio": None,
                                      "max_error_rate_increase": None, "min_accuracy_delta": -0.2}})
    r = await make_router(base_config(tmp_path, {"v1": v1.url, "v2": v2.url}, routes, monitoring={"feedback": {}}))
    async with aiohttp.ClientSession() as s:
        predicted = await predict_all(s, r.url, 60)
        assert not v2.seen or all(seen["headers"].get("x-shadow-request") == "1" for seen in v2.seen)
        await _mirrored(s, r.admin, 60)
        status, result = await feedback(s, r.admin, [{"request_id": rid, "label": int(row[0] > 0)}
                                                     for rid, row in predicted])
        assert status == 200 and result["accepted"] == 60
        scores = await quality(s, r.admin)
        assert scores["v2"]["labelled"] == 60 and scores["v2"]["correct"] == 60  # scored as the shadow
        info = await _rollout_until(s, r.admin, "promoted")
    assert "accuracy" in json.dumps(info["last_decision"]), info["last_decision"]


async def _mirrored(s: aiohttp.ClientSession, admin: str, n: int) -> None:
    deadline = time.monotonic() + 10
    report: dict[str, Any] = {}
    while time.monotonic() < deadline:
        async with s.get(admin + "/-/routes/clf/shadow") as resp:
            report = await resp.json()
        if report["in_flight"] == 0 and report["compared"] + sum(report["not_compared"].values()) >= n:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"shadow comparisons did not settle: {report}")


async def _rollout_until(s: aiohttp.ClientSession, admin: str, phase: str) -> dict[str, Any]:
    deadline = time.monotonic() + 15
    info: dict[str, Any] = {}
    while time.monotonic() < deadline:
        async with s.get(admin + "/-/routes/clf/rollout?tail=20") as resp:
            info = await resp.json()
        if info["phase"] == phase:
            return info
        await asyncio.sleep(0.1)
    raise AssertionError(f"the rollout did not reach {phase}: {info.get('phase')}, {info.get('last_decision')}")
