"""What real model servers send, played by small fakes: compressed answers, control-plane calls,
and clients that read errors in their protocol's shape (issue 15, items 1, 2 and 6)."""

from __future__ import annotations

import asyncio
import gzip
import json
import random
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import brotli
import zstandard
from aiohttp import web

from tests.helpers import TOKEN, BackendFactory, RouterFactory, base_config, free_port

Payload = Callable[[dict[str, Any]], dict[str, Any]]
COMPRESS: dict[str, Callable[[bytes], bytes]] = {
    "gzip": lambda b: gzip.compress(b, mtime=0), "br": brotli.compress, "deflate": zlib.compress,
    "zstd": zstandard.ZstdCompressor().compress, "identity": lambda b: b,
}


def classifier(threshold: float) -> Payload:
    """A KServe V1 classifier: label "a" when the first feature passes `threshold`."""
    def predict(body: dict[str, Any]) -> dict[str, Any]:
        return {"predictions": [{"label": "a" if row[0] > threshold else "b", "score": round(row[0], 6)}
                                for row in body["instances"]]}
    return predict


def encoded(payload: Payload, encoding: str) -> Callable[[web.Request], Any]:
    async def handle(request: web.Request) -> web.StreamResponse:
        raw = json.dumps(payload(await request.json())).encode()
        headers = {"Content-Type": "application/json"}
        if encoding != "identity":
            headers["Content-Encoding"] = encoding
        return web.Response(body=COMPRESS[encoding](raw), headers=headers)
    return handle


def raw_answer(body: bytes, encoding: str) -> Callable[[web.Request], Any]:
    async def handle(request: web.Request) -> web.StreamResponse:
        await request.read()
        return web.Response(body=body, headers={"Content-Type": "application/json", "Content-Encoding": encoding})
    return handle


async def shadow_report(s: aiohttp.ClientSession, admin: str, route: str, expected: int) -> dict[str, Any]:
    """The route's shadow report once `expected` mirrored requests are accounted for."""
    report: dict[str, Any] = {}
    for _ in range(200):
        async with s.get(f"{admin}/-/routes/{route}/shadow") as resp:
            report = await resp.json()
        done = report["compared"] + report["extraction_errors"] + sum(report["not_compared"].values())
        if report["in_flight"] == 0 and done >= expected:
            return report
        await asyncio.sleep(0.05)
    raise AssertionError(f"shadow of {route} did not settle at {expected}: {report}")


def case_route(name: str, live: str, shadow: str, **compare: Any) -> dict[str, Any]:
    # max_concurrency: pacing never drops a copy; the tests count every request's comparison
    return {"name": name, "match": {"path_prefix": "/v1/models/m", "headers": {"X-Case": name}}, "primary": live,
            "shadow": {"backend": shadow, "max_concurrency": 100_000, "compare": {"format": "kserve-v1", **compare}}}


async def test_compressed_answers_are_compared_and_relayed_as_sent(
        make_router: RouterFactory, make_backend: BackendFactory, tmp_path: Path) -> None:
    backends = {"gz": encoded(classifier(0.0), "gzip"), "br": encoded(classifier(0.3), "br"),
                "zstd": encoded(classifier(0.0), "zstd"), "deflate": encoded(classifier(0.3), "deflate")}
    urls = {name: (await make_backend(name, handler)).url for name, handler in backends.items()}
    routes = [case_route("gzbr", "gz", "br"), case_route("zd", "zstd", "deflate")]
    r = await make_router(base_config(tmp_path, urls, routes))
    rng = random.Random(4)
    n = 40
    truth = {"gzbr": 0, "zd": 0}
    async with aiohttp.ClientSession(auto_decompress=False) as s:
        for case, live, threshold in (("gzbr", "gzip", 0.0), ("zd", "zstd", 0.0)):
            for _ in range(n):
                body = {"instances": [[rng.gauss(0, 1)] for _ in range(3)]}
                async with s.post(r.url + "/v1/models/m:predict", json=body, headers={"X-Case": case}) as resp:
                    raw = await resp.read()
                    assert resp.headers["Content-Encoding"] == live
                expected = json.dumps(classifier(threshold)(body)).encode()
                assert raw == COMPRESS[live](expected)  # the backend's bytes, untouched
                truth[case] += all((row[0] > 0.0) == (row[0] > 0.3) for row in body["instances"])
        for case in truth:
            report = await shadow_report(s, r.admin, case, n)
            assert report["compared"] == n and report["extraction_errors"] == 0, report
            assert report["label_agreement"]["k"] == truth[case] and report["label_agreement"]["n"] == n
            assert 0 < truth[case] < n
            async with s.get(f"{r.admin}/-/routes/{case}/diffs?limit=1") as resp:
                diff = (await resp.json())["diffs"][0]
            assert json.loads(diff["live"])["predictions"] and json.loads(diff["shadow"])["predictions"]  # decoded


async def test_bombs_and_undecodable_answers_are_counted_by_reason(
        make_router: RouterFactory, make_backend: BackendFactory, tmp_path: Path) -> None:
    bomb = gzip.compress(b'{"predictions": [' + b" " * (8 * 1024 * 1024) + b"]}")
    handlers = {"live": encoded(classifier(0.0), "gzip"), "bomb": raw_answer(bomb, "gzip"),
                "corrupt": raw_answer(b"\x1f\x8b not gzip at all", "gzip"),
                "unknown": raw_answer(b"{}", "compress"), "text": encoded(lambda _: {"nope": 1}, "br")}
    urls = {name: (await make_backend(name, h)).url for name, h in handlers.items()}
    routes = [case_route(name, "live", name) for name in ("bomb", "corrupt", "unknown", "text")]
    for route in routes:
        route["shadow"]["max_response"] = "64KiB"  # decoded beyond this: not compared
    r = await make_router(base_config(tmp_path, urls, routes))
    n = 5
    async with aiohttp.ClientSession() as s:
        for case in ("bomb", "corrupt", "unknown", "text"):
            for _ in range(n):
                async with s.post(r.url + "/v1/models/m:predict", json={"instances": [[1.0]]},
                                  headers={"X-Case": case}) as resp:
                    assert resp.status == 200 and (await resp.json())["predictions"][0]["label"] == "a"
        reports = {case: await shadow_report(s, r.admin, case, n) for case in ("bomb", "corrupt", "unknown", "text")}
    assert reports["bomb"]["not_compared"] == {"decoded_too_large": n} and reports["bomb"]["extraction_errors"] == 0
    assert reports["corrupt"]["extraction_error_reasons"] == {"corrupt_encoding": n}
    assert reports["unknown"]["extraction_error_reasons"] == {"unsupported_encoding": n}
    assert reports["text"]["extraction_error_reasons"] == {"missing_output": n}
    r.stop()
    log = "".join(r.output)
    # the first of each reason is logged, not every one
    assert log.count("not compared (corrupt_encoding)") == 1 and "not compared (missing_output)" in log


async def test_router_errors_follow_the_route_protocol(
        make_router: RouterFactory, make_backend: BackendFactory, tmp_path: Path) -> None:
    live = await make_backend("live")
    dead = f"http://127.0.0.1:{free_port()}"
    routes = [
        {"name": "v2", "match": {"path_prefix": "/v2/"}, "primary": "dead", "retries": 0},  # by its path
        {"name": "oai", "match": {"path_prefix": "/gpt/"}, "primary": "dead", "retries": 0, "protocol": "openai"},
        {"name": "v1", "match": {"path_prefix": "/fraud/"}, "primary": "dead", "retries": 0,
         "shadow": {"backend": "live", "compare": {"format": "kserve-v1"}}},  # from compare.format
        {"name": "own", "match": {"path_prefix": "/own/"}, "primary": "dead", "retries": 0},
    ]
    cfg = base_config(tmp_path, {"dead": dead, "live": live.url}, routes, limits={"max_body": "1KiB"})
    r = await make_router(cfg)
    async with aiohttp.ClientSession() as s:
        async def error(path: str, **kwargs: Any) -> tuple[int, Any]:
            async with s.post(r.url + path, **kwargs) as resp:
                assert resp.headers["Content-Type"] == "application/json"
                return resp.status, (await resp.json())["error"]

        status, body = await error("/v2/models/m/infer")
        assert status == 502 and isinstance(body, str) and "cannot connect" in body
        status, body = await error("/gpt/v1/chat/completions")
        assert status == 502 and body["type"] == "server_error" and body["code"] == "bad_gateway"
        assert "cannot connect" in body["message"] and set(body) == {"message", "type", "code", "param"}
        status, body = await error("/fraud/x:predict")
        assert status == 502 and isinstance(body, str)
        status, body = await error("/own/x")
        assert status == 502 and body["status"] == 502 and "cannot connect" in body["message"]
        # refused before any route matched: the path tells the protocol
        status, body = await error("/v2/models/m/infer", data=b"x" * 4096)
        assert status == 413 and isinstance(body, str) and "max_body" in body
        status, body = await error("/v1/chat/completions")
        assert status == 404 and body["type"] == "invalid_request_error" and body["code"] == "not_found"


async def test_only_inference_calls_are_mirrored(
        make_router: RouterFactory, make_backend: BackendFactory, tmp_path: Path) -> None:
    live, shadow = await make_backend("live"), await make_backend("shadow")
    v2_shadow = {"backend": "shadow", "compare": {"format": "open-inference-v2"}}
    routes = [
        {"name": "v2", "match": {"path_prefix": "/v2"}, "primary": "live", "shadow": v2_shadow},
        {"name": "custom", "match": {"path_prefix": "/c/"}, "primary": "live",
         "shadow": {"backend": "shadow", "paths": ["/c/*/score", "/c/v2/repository/*"]}},
    ]
    r = await make_router(base_config(tmp_path, {"live": live.url, "shadow": shadow.url}, routes))
    calls = ["/v2/models/clf/infer", "/v2/models/clf/versions/3/infer", "/v2/repository/models/clf/unload",
             "/v2/repository/index", "/v2/models/clf/ready", "/c/m/score", "/c/m/other", "/c/v2/repository/x"]
    async with aiohttp.ClientSession() as s:
        for path in calls:
            async with s.post(r.url + path, json={}) as resp:
                assert resp.status == 200, path
        await shadow_report(s, r.admin, "v2", 2)
        await shadow_report(s, r.admin, "custom", 1)
        async with s.get(r.admin + "/-/routes/v2/shadow") as resp:
            v2 = await resp.json()
    assert [b["path"] for b in live.seen] == calls  # the live path is untouched
    # the repository API is never mirrored, even when shadow.paths names it
    assert sorted(b["path"] for b in shadow.seen) == ["/c/m/score", "/v2/models/clf/infer",
                                                      "/v2/models/clf/versions/3/infer"]
    assert v2["not_mirrored"] == {"path": 3} and v2["mirrored"] == 2


async def test_status_page_shows_why_pairs_were_not_compared(
        make_router: RouterFactory, make_backend: BackendFactory, tmp_path: Path) -> None:
    from playwright.async_api import async_playwright

    from tests.test_statuspage import CHROMIUM, CHROMIUM_ARGS, VALUE_IS_JS

    handlers = {"live": encoded(classifier(0.0), "gzip"), "corrupt": raw_answer(b"\x1f\x8b not gzip", "gzip")}
    urls = {name: (await make_backend(name, h)).url for name, h in handlers.items()}
    r = await make_router(base_config(tmp_path, urls, [case_route("corrupt", "live", "corrupt")]))
    async with aiohttp.ClientSession() as s:
        for _ in range(3):
            async with s.post(r.url + "/v1/models/m:predict", json={"instances": [[1.0]]},
                              headers={"X-Case": "corrupt"}) as resp:
                assert resp.status == 200
                await resp.read()
        await shadow_report(s, r.admin, "corrupt", 3)
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page()
            await page.goto(r.admin + "/")
            testid = "route-corrupt-not-compared-corrupt_encoding"
            await page.wait_for_function(VALUE_IS_JS, arg=[testid, "3"], timeout=8000)
            assert "corrupt_encoding \u00d73" in await page.get_by_test_id("route-corrupt-not-compared").inner_text()
        finally:
            await browser.close()


def v2_probabilities(shift: float) -> Payload:
    """MLServer-like answers for a batch: `predict` and `predict_proba`, the latter shifted a little."""
    def predict(body: dict[str, Any]) -> dict[str, Any]:
        rows = body["instances"]
        probs = [min(0.99, max(0.01, 0.5 + row[0] / 4 + shift)) for row in rows]
        return {"outputs": [
            {"name": "predict", "shape": [len(rows), 1], "datatype": "INT64", "data": [int(p > 0.5) for p in probs]},
            {"name": "predict_proba", "shape": [len(rows), 2], "datatype": "FP64",
             "data": [v for p in probs for v in (1 - p, p)]}]}
    return predict


async def test_a_rollout_gated_on_labels_passes_a_candidate_whose_probabilities_differ(
        make_router: RouterFactory, make_backend: BackendFactory, tmp_path: Path) -> None:
    v1 = await make_backend("v1", encoded(v2_probabilities(0.0), "gzip"))
    v2 = await make_backend("v2", encoded(v2_probabilities(0.001), "gzip"))
    routes = [{"name": "clf", "match": {"path_prefix": "/v2/"}, "primary": "v1", "candidate": "v2",
               "shadow": {"backend": "v2", "compare": {"format": "open-inference-v2", "agree": "labels"}},
               "rollout": {"steps": [0, 100], "interval": "200ms", "min_samples": 30, "max_duration": "2m",
                           "gates": {"min_agreement": 0.5, "max_latency_ratio": None,
                                     "max_error_rate_increase": None}, "confidence": 0.9}}]
    r = await make_router(base_config(tmp_path, {"v1": v1.url, "v2": v2.url}, routes))
    rng = random.Random(8)
    async with aiohttp.ClientSession() as s:
        phase = ""
        for _ in range(600):
            body = {"instances": [[rng.choice([-1, 1]) * (0.1 + rng.random())] for _ in range(4)]}
            async with s.post(r.url + "/v2/models/clf/infer", json=body) as resp:
                assert resp.status == 200
                await resp.read()
            async with s.get(r.admin + "/-/routes/clf/rollout") as resp:
                phase = (await resp.json())["phase"]
            if phase in ("promoted", "rolled_back", "paused"):
                break
        async with s.get(r.admin + "/-/routes/clf/shadow") as resp:
            report = await resp.json()
    assert phase == "promoted", phase
    # every probability differs in its digits, every label agrees, row by row
    assert report["agreement_raw"]["k"] == 0 and report["label_agreement"]["rate"] == 1.0
    instances = report["instance_label_agreement"]
    assert instances["n"] == 4 * instances["requests"] and instances["rate"] == 1.0


async def test_the_prediction_log_and_feedback_read_compressed_answers(
        make_router: RouterFactory, make_backend: BackendFactory, tmp_path: Path) -> None:
    live = await make_backend("live", encoded(classifier(0.0), "gzip"))
    shadow = await make_backend("shadow", encoded(classifier(0.3), "br"))
    log_path = tmp_path / "predictions.jsonl"
    routes = [case_route("log", "live", "shadow")]
    routes[0]["match"] = {"path_prefix": "/v1/models/m"}
    monitoring = {"prediction_log": {"path": str(log_path), "include_bodies": True}, "feedback": {}}
    r = await make_router(base_config(tmp_path, {"live": live.url, "shadow": shadow.url}, routes,
                                      monitoring=monitoring))
    rows = [0.1, 0.5, -0.2]  # live says a, a, b; the shadow b, a, b
    async with aiohttp.ClientSession() as s:
        ids = []
        for x in rows:
            async with s.post(r.url + "/v1/models/m:predict", json={"instances": [[x]]}) as resp:
                assert resp.status == 200 and (await resp.json())["predictions"]
                ids.append(resp.headers["X-Router-Request-Id"])
        await shadow_report(s, r.admin, "log", len(rows))
        async with s.post(r.admin + "/-/feedback", json=[{"request_id": i, "label": "a"} for i in ids],
                          headers={"Authorization": f"Bearer {TOKEN}"}) as resp:
            assert resp.status == 200 and (await resp.json())["accepted"] == 3
        async with s.get(r.admin + "/-/routes/log/quality") as resp:
            backends = (await resp.json())["backends"]
    assert (backends["live"]["correct"], backends["shadow"]["correct"]) == (2, 1)
    r.stop()  # flushes the log
    records = [json.loads(line) for line in log_path.read_text().splitlines()]
    assert sorted(rec["request_id"] for rec in records) == sorted(ids)
    for rec in records:
        assert rec["response_body"]["predictions"][0]["label"] in ("a", "b")
        assert rec["shadow"]["response_body"]["predictions"][0]["label"] in ("a", "b")
