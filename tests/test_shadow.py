"""Shadow traffic end to end: mirroring never hurts the live path; comparisons and reports."""

from __future__ import annotations

import asyncio
import random
import shutil
import subprocess
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp

from tests.helpers import BackendFactory, RouterFactory, base_config, eventually, free_port, get_json

ModelFactory = Callable[..., Awaitable[str]]


def shadow_route(**shadow: Any) -> list[dict[str, Any]]:
    return [{"name": "fraud", "match": {"path_prefix": "/v1/models/fraud"}, "primary": "v1",
             "shadow": {"backend": "v2", "max_concurrency": 64, **shadow}}]


def instances(rng: random.Random, n: int = 2) -> dict[str, Any]:
    return {"instances": [[rng.gauss(0, 1) for _ in range(4)] for _ in range(n)]}


async def settle(s: aiohttp.ClientSession, admin: str, expected: int, key: str = "compared") -> dict[str, Any]:
    """Wait until the background comparisons have caught up (they never block the live path)."""
    report: dict[str, Any] = {}
    for _ in range(200):
        async with s.get(admin + "/-/routes/fraud/shadow") as r:
            report = await r.json()
        done = report["compared"] + report["extraction_errors"] + sum(report["not_compared"].values())
        if report["in_flight"] == 0 and (report[key] >= expected or done >= report["mirrored"] >= expected):
            return report
        await asyncio.sleep(0.05)
    raise AssertionError(f"shadow comparisons did not settle: {report}")


async def post_many(s: aiohttp.ClientSession, url: str, n: int, seed: int = 1) -> list[tuple[int, str, bytes]]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        async with s.post(url + "/v1/models/fraud:predict", json=instances(rng)) as r:
            out.append((r.status, r.headers.get("X-Model-Backend", ""), await r.read()))
    return out


async def test_candidate_compared_with_live_model(make_router: RouterFactory, make_model: ModelFactory,
                                                  tmp_path: Path) -> None:
    v1 = await make_model(version="v1")
    v2 = await make_model(version="v2", perturb=0.3, seed=7)
    # max_concurrency high enough that pacing (a copy every shadow latency / max_concurrency) never
    # drops a copy of these sequential requests, even when a loaded machine slows the shadow down:
    # this test counts every copy.
    r = await make_router(base_config(tmp_path, {"v1": v1, "v2": v2}, shadow_route(
        compare={"format": "kserve-v1", "ignore": ["$.model_version", "$.model_name"], "abs_tol": 1e-6},
        max_concurrency=100_000)))
    async with aiohttp.ClientSession() as s:
        live = await post_many(s, r.url, 300)
        assert {(status, backend) for status, backend, _ in live} == {(200, "v1")}
        report = await settle(s, r.admin, 300)
        async with s.get(v2 + "/-/stats") as resp:
            v2_stats = await resp.json()
        async with s.get(r.admin + "/-/routes/fraud/diffs?limit=5") as resp:
            diffs = (await resp.json())["diffs"]
    assert report["mirrored"] == 300 and report["compared"] == 300
    # perturbed logits: the scores never agree within 1e-6, the labels mostly do
    assert report["agreement"]["rate"] == 0.0 and report["agreement"]["high"] < 0.02
    labels = report["label_agreement"]
    assert 0.5 < labels["rate"] < 1 and labels["low"] < labels["rate"] < labels["high"]
    fields = {f["field"]: f for f in report["fields"]}
    assert fields["$.predictions[*].scores[*]"]["mismatch_rate"] == 1.0
    assert 0 < fields["$.predictions[*].label"]["mismatches"] < 300
    assert report["latency_seconds"]["live"]["p50"] and report["latency_seconds"]["shadow"]["p99"]
    assert report["latency_seconds"]["pairs"] == 300
    assert report["errors"]["shadow"]["k"] == 0
    # the shadow request is marked and carries the live request's id
    assert v2_stats["last_headers"]["x-shadow-request"] == "1"
    assert len(diffs) == 5 and all(d["request_id"] and d["fields"] and d["live"] and d["shadow"] for d in diffs)
    assert diffs[0]["request_id"] == v2_stats["last_headers"]["x-request-id"]  # newest first


async def test_shadow_carries_the_same_request_id(make_router: RouterFactory, make_model: ModelFactory,
                                                  tmp_path: Path) -> None:
    v1, v2 = await make_model(version="v1"), await make_model(version="v2")
    r = await make_router(base_config(tmp_path, {"v1": v1, "v2": v2}, shadow_route()))
    async with aiohttp.ClientSession() as s:
        async with s.post(r.url + "/v1/models/fraud:predict", json=instances(random.Random(3)),
                          headers={"X-Request-Id": "req-42"}) as resp:
            assert resp.status == 200
        await settle(s, r.admin, 1)
        async with s.get(v2 + "/-/stats") as resp:
            headers = (await resp.json())["last_headers"]
        async with s.get(v1 + "/-/stats") as resp:
            live_headers = (await resp.json())["last_headers"]
    assert headers["x-request-id"] == "req-42" and headers["x-shadow-request"] == "1"
    assert live_headers["x-request-id"] == "req-42" and "x-shadow-request" not in live_headers


async def bad_shadow(kind: str) -> tuple[asyncio.Server, str]:
    """A shadow that hangs, resets, or answers garbage."""
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length")), 0)
                await reader.readexactly(length)
                if kind == "hang":
                    await asyncio.sleep(30)
                elif kind == "reset":
                    writer.transport.abort()
                    return
                else:
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nnot json!")
                    await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    port = free_port()
    server = await asyncio.start_server(handle, "127.0.0.1", port)
    return server, f"http://127.0.0.1:{port}"


async def test_failing_shadows_never_touch_the_live_path(make_router: RouterFactory, make_model: ModelFactory,
                                                         tmp_path: Path) -> None:
    v1 = await make_model(version="v1")
    failing500 = await make_model(version="v2", error_rate=1.0)
    servers = {kind: await bad_shadow(kind) for kind in ("hang", "reset", "garbage")}
    urls = {"v1": v1, "s500": failing500, **{k: u for k, (_, u) in servers.items()}}
    # Only the hung shadow meets its limits: 4 in flight, each held until its timeout, long enough
    # that the first 5 requests come before any copy ends (however loaded the machine), so the 5th
    # is dropped for concurrency. The others never pace a copy away: each is counted.
    limits = {"hang": {"timeout": "2s", "max_concurrency": 4}}
    routes = [{"name": name, "match": {"path_prefix": "/v1/models/fraud", "headers": {"X-Case": name}}, "primary": "v1",
               "shadow": {"backend": name, "timeout": "300ms", "max_concurrency": 100_000, **limits.get(name, {}),
                          "compare": {"format": "kserve-v1"}}}
              for name in ("hang", "reset", "garbage", "s500")]
    try:
        r = await make_router(base_config(tmp_path, urls, routes))
        rng = random.Random(5)
        async with aiohttp.ClientSession() as s:
            async with s.post(v1 + "/v1/models/fraud:predict", json=instances(random.Random(9))) as resp:
                direct = await resp.read()
            for name in ("hang", "reset", "garbage", "s500"):
                for i in range(12):
                    body = instances(random.Random(9)) if i == 0 else instances(rng)
                    async with s.post(f"{r.url}/v1/models/fraud:predict", json=body,
                                      headers={"X-Case": name}) as resp:
                        assert resp.status == 200, name
                        data = await resp.read()
                    if i == 0:
                        assert data == direct  # byte for byte what the live model says
                    if name != "hang":
                        # Wait for this copy to end, so that each is counted before the next. (This
                        # alone did not stop pacing: its latency average can exceed 4x this copy's.)
                        await eventually(lambda n=name: _settled(s, r.admin, n), f"{name} shadow copy to end")
            # The hung copies end at their 2 s timeout.
            await eventually(lambda: _settled(s, r.admin, "hang"), "hung shadow copies to time out")
            reports = {name: await get_json(s, f"{r.admin}/-/routes/{name}/shadow")
                       for name in ("hang", "reset", "garbage", "s500")}
    finally:
        for server, _ in servers.values():
            server.close()
    assert reports["hang"]["dropped"].get("concurrency", 0) > 0  # 4 hung at once, the rest dropped
    assert reports["hang"]["errors"]["shadow_kinds"].get("timeout", 0) >= 1
    assert reports["reset"]["errors"]["shadow"]["k"] == reports["reset"]["mirrored"] == 12
    assert reports["garbage"]["extraction_errors"] == 12 and reports["garbage"]["compared"] == 0
    assert reports["s500"]["errors"]["shadow_kinds"] == {"status_5xx": 12}
    for report in reports.values():
        assert report["errors"]["live"]["k"] == 0
        assert "paced" not in report["dropped"] or report is reports["hang"]


async def _settled(s: aiohttp.ClientSession, admin: str, route: str) -> bool:
    """No copy of the route in flight and every mirrored copy accounted for (errored, compared or skipped)."""
    rep = await get_json(s, f"{admin}/-/routes/{route}/shadow")
    done = rep["errors"]["shadow"]["k"] + rep["compared"] + rep["extraction_errors"]
    return rep["in_flight"] == 0 and rep["mirrored"] > 0 and done >= rep["mirrored"]


async def test_stalled_shadow_drops_are_bounded(make_router: RouterFactory, make_model: ModelFactory,
                                                tmp_path: Path) -> None:
    v1 = await make_model(version="v1")
    # The copies stay in flight for the whole test, however slowly a loaded machine sends the 40
    # requests: were one to end, the next request would be mirrored in its place.
    slow = await make_model(version="v2", latency_ms=60_000)
    r = await make_router(base_config(tmp_path, {"v1": v1, "v2": slow},
                                      shadow_route(max_concurrency=3, timeout="60s")))
    async with aiohttp.ClientSession() as s:
        live = await post_many(s, r.url, 40)
        async with s.get(r.admin + "/-/routes/fraud/shadow") as resp:
            report = await resp.json()
    assert all(status == 200 for status, _, _ in live)
    assert report["in_flight"] == 3 and report["mirrored"] == 3 and report["dropped"]["concurrency"] == 37


async def test_noise_field_is_told_apart(make_router: RouterFactory, make_model: ModelFactory, tmp_path: Path) -> None:
    # Both sides are the same model, with one field random on every call: that field is noise,
    # and agreement without it is perfect.
    v1 = await make_model(version="v1", noise_field="request_nonce", seed=1)
    twin = await make_model(version="v1", noise_field="request_nonce", seed=2)
    r = await make_router(base_config(tmp_path, {"v1": v1, "v2": twin}, shadow_route(
        compare={"format": "kserve-v1", "noise_percent": 60}, max_concurrency=100_000)))  # every copy counted
    async with aiohttp.ClientSession() as s:
        await post_many(s, r.url, 150)
        report = await settle(s, r.admin, 150)
    fields = {f["field"]: f for f in report["fields"]}
    assert "$.predictions[*].request_nonce" in report["noise_fields"]
    assert fields["$.predictions[*].request_nonce"]["class"] == "noise"
    assert fields["$.predictions[*].label"]["mismatches"] == 0
    assert report["agreement_raw"]["rate"] == 0.0 and report["agreement"]["rate"] == 1.0
    assert report["noise_samples"] > 40


async def test_streamed_openai_answers_compared_after_accumulation(
        make_router: RouterFactory, make_model: ModelFactory, tmp_path: Path) -> None:
    v1 = await make_model(version="v1", stream_delay_ms=5)
    twin = await make_model(version="v1", stream_delay_ms=5)
    routes = [{"name": "fraud", "match": {"path_prefix": "/v1/chat"}, "primary": "v1",
               "shadow": {"backend": "v2", "max_concurrency": 100_000,  # pacing never drops a copy: all 5 counted
                          "compare": {"format": "openai"}}}]
    r = await make_router(base_config(tmp_path, {"v1": v1, "v2": twin}, routes))
    async with aiohttp.ClientSession() as s:
        for i in range(5):
            body = {"model": "fraud", "stream": True, "messages": [{"role": "user", "content": f"question {i}"}]}
            async with s.post(r.url + "/v1/chat/completions", json=body) as resp:
                assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/event-stream")
                text = await resp.text()
                assert text.rstrip().endswith("data: [DONE]")
        report = await settle(s, r.admin, 5)
    assert report["compared"] == 5 and report["agreement"]["rate"] == 1.0
    assert report["text_similarity_mean"] == 1.0
    assert any(f["field"].startswith("$.choices") for f in report["fields"])


async def test_shadow_errors_in_admin(make_router: RouterFactory, make_backend: BackendFactory, tmp_path: Path) -> None:
    b = await make_backend("v1")
    r = await make_router(base_config(tmp_path, {"v1": b.url}, [{"name": "fraud", "match": {"path": "/x"},
                                                                 "primary": "v1"}]))
    async with aiohttp.ClientSession() as s:
        async with s.get(r.admin + "/-/routes/fraud/shadow") as resp:
            assert resp.status == 404 and "has no shadow" in (await resp.json())["error"]["message"]
        async with s.get(r.admin + "/-/routes/nope/diffs") as resp:
            assert resp.status == 404


async def test_shadow_metrics_and_promtool(make_router: RouterFactory, make_model: ModelFactory, tmp_path: Path) -> None:
    v1, v2 = await make_model(version="v1"), await make_model(version="v2", perturb=0.3, seed=7)
    r = await make_router(base_config(tmp_path, {"v1": v1, "v2": v2},
                                      shadow_route(compare={"format": "kserve-v1"}, max_concurrency=100_000)))
    async with aiohttp.ClientSession() as s:
        await post_many(s, r.url, 20)  # every copy counted in the metrics: pacing never drops one
        await settle(s, r.admin, 20)
        async with s.get(r.admin + "/metrics") as resp:
            text = await resp.text()
    assert 'router_shadow_requests_total{result="mirrored",route="fraud"} 20.0' in text
    assert 'router_shadow_comparisons_total{result="disagree",route="fraud"} 20.0' in text
    assert 'router_shadow_field_comparisons_total{field="$.predictions[*].scores[*]",result="mismatch",route="fraud"} 20.0' in text
    assert 'router_shadow_latency_seconds_count{route="fraud",side="shadow"} 20.0' in text
    promtool = shutil.which("promtool")
    assert promtool, "promtool is installed by `make deps` (Debian package prometheus)"
    check = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, check.stdout + check.stderr
