"""The status page at `/` in a real headless Chromium: its figures match the admin API's JSON, it
updates itself without a reload, reports an unreachable API, and loads nothing from elsewhere."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from playwright.async_api import ConsoleMessage, Page, async_playwright

from tests.helpers import TOKEN, RouterFactory, base_config

ModelFactory = Callable[..., Awaitable[str]]
CHROMIUM = Path("/usr/bin/chromium")
# No sandbox (containers, root), and nothing that phones home: routers run in closed networks.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--no-first-run"]
ROUTE = "fraud"
FIGURES_JS = """() => Object.fromEntries([...document.querySelectorAll('[data-testid]')]
    .map(e => [e.dataset.testid, {text: e.textContent, value: e.dataset.value ?? null,
                                  current: e.getAttribute('aria-current')}]))"""
VALUE_IS_JS = """([id, v]) => document.querySelector(`[data-testid="${id}"]`)?.dataset.value === v"""


def routes() -> list[dict[str, Any]]:
    # Starts at 20% and holds: min_samples is out of reach, so the gates stay inconclusive.
    rollout = {"steps": [20, 100], "interval": "300ms", "min_samples": 100000, "max_duration": "10m",
               "gates": {"min_agreement": 0.5, "max_latency_ratio": None, "max_error_rate_increase": 0.5},
               "confidence": 0.99}
    return [{"name": ROUTE, "match": {"path_prefix": "/v1/models/fraud"}, "primary": "v1", "candidate": "v2",
             "split": {"sticky": "header:X-User-Id"},
             # max_concurrency: pacing never drops a copy, so `settled` may wait for every request's
             # (under load a slower shadow made pacing drop some, and the count never matched)
             "shadow": {"backend": "v2", "max_concurrency": 100_000,
                        "compare": {"format": "kserve-v1", "paths": ["$.predictions[*].label"]}},
             "rollout": rollout}]


async def get(s: aiohttp.ClientSession, url: str) -> Any:
    async with s.get(url) as r:
        assert r.status == 200, (url, r.status, await r.text())
        return await r.json()


async def send(s: aiohttp.ClientSession, url: str, users: range, rng: random.Random) -> None:
    for user in users:
        body = {"instances": [[rng.gauss(0, 1) for _ in range(4)]]}
        async with s.post(url + "/v1/models/fraud:predict", json=body, headers={"X-User-Id": f"u{user}"}) as r:
            assert r.status == 200
            await r.read()


async def settled(s: aiohttp.ClientSession, admin: str) -> tuple[dict[str, Any], dict[str, Any], list[Any]]:
    """/-/status, the shadow report and the recent diffs, once every mirrored request is compared."""
    async with asyncio.timeout(5):
        while True:
            status = await get(s, admin + "/-/status")
            route = status["routes"][0]
            shadow = await get(s, f"{admin}/-/routes/{ROUTE}/shadow")
            if shadow["in_flight"] == 0 and shadow["compared"] == shadow["mirrored"] == route["requests_by_backend"]["v1"]:
                diffs = await get(s, f"{admin}/-/routes/{ROUTE}/diffs?limit=5")
                return route, shadow, diffs["diffs"]
            await asyncio.sleep(0.05)


async def wait_for_total(page: Page, route: dict[str, Any]) -> None:
    total = sum(route["requests_by_backend"].values())
    await page.wait_for_function(VALUE_IS_JS, arg=[f"route-{ROUTE}-requests-total", str(total)], timeout=8000)


async def check_figures(page: Page, route: dict[str, Any], shadow: dict[str, Any], diffs: list[Any]) -> None:
    shown: dict[str, dict[str, str | None]] = await page.evaluate(FIGURES_JS)
    p = f"route-{ROUTE}"
    assert shown[f"{p}-primary"]["text"] == "v1" and shown[f"{p}-candidate"]["text"] == "v2"
    assert float(shown[f"{p}-candidate-percent"]["value"] or "nan") == route["candidate_percent"]
    assert shown[f"{p}-candidate-percent"]["text"] == f"{route['candidate_percent']:g}%"
    for backend, count in route["requests_by_backend"].items():
        assert shown[f"{p}-requests-{backend}"]["text"] == str(count)
    assert shown[f"{p}-phase"]["text"] == route["rollout"]["phase"].replace("_", " ")
    step = route["rollout"]["step_index"]
    assert shown[f"{p}-step-{step}"]["current"] == "step"
    assert shown[f"{p}-decision-reason"]["text"]

    rate = shadow["agreement"]["rate"]
    assert float(shown[f"{p}-agreement"]["value"] or "nan") == rate
    text = shown[f"{p}-agreement"]["text"] or ""
    assert text.endswith("%") and abs(float(text[:-1]) - rate * 100) <= 0.05 + 1e-9, (text, rate)
    assert shown[f"{p}-compared"]["text"] == str(shadow["compared"])
    assert shown[f"{p}-mirrored"]["text"] == str(shadow["mirrored"])
    for side in ("live", "shadow"):
        assert float(shown[f"{p}-errors-{side}"]["value"] or "nan") == shadow["errors"][side]["rate"]
        for q in ("p50", "p95", "p99"):
            assert float(shown[f"{p}-latency-{side}-{q}"]["value"] or "nan") == shadow["latency_seconds"][side][q]
    assert [shown[f"{p}-diff-{i}-request-id"]["text"] for i in range(len(diffs))] == [d["request_id"] for d in diffs]


async def test_status_page_matches_the_admin_api(make_router: RouterFactory, make_model: ModelFactory,
                                                 tmp_path: Path) -> None:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: run `make deps` (it installs the Debian chromium package)")
    v1, v2 = await make_model(version="v1"), await make_model(version="v2", perturb=3.0, seed=5)
    r = await make_router(base_config(tmp_path, {"v1": v1, "v2": v2}, routes()))
    rng = random.Random(7)
    async with aiohttp.ClientSession() as s:
        await send(s, r.url, range(60), rng)
        route, shadow, diffs = await settled(s, r.admin)
        assert route["requests_by_backend"].get("v2") and diffs, "the test needs traffic on both sides and diffs"
        await check_headers(s, r.admin)

        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            try:
                page = await browser.new_page()
                requested: list[str] = []
                errors: list[str] = []
                page.on("request", lambda req: requested.append(req.url))
                page.on("console", lambda msg: errors.append(describe(msg)) if unexpected(msg) else None)
                page.on("pageerror", lambda exc: errors.append(f"uncaught: {exc}"))

                await page.goto(r.admin + "/")
                await wait_for_total(page, route)
                await check_figures(page, route, shadow, diffs)
                await check_alerts(s, page, r.admin)

                # More traffic: the page catches up by itself, without navigating.
                await page.evaluate("() => { window.notReloaded = true; }")
                await send(s, r.url, range(60, 90), rng)
                route, shadow, diffs = await settled(s, r.admin)
                await wait_for_total(page, route)
                await check_figures(page, route, shadow, diffs)
                assert await page.evaluate("() => window.notReloaded === true")
                assert errors == []

                # The admin API goes away: a banner says so; it clears when the API is back.
                await page.route("**/-/status", lambda rt: rt.abort())
                await page.get_by_test_id("status-error").wait_for(state="visible", timeout=8000)
                await page.unroute("**/-/status")
                await page.get_by_test_id("status-error").wait_for(state="hidden", timeout=8000)

                assert requested and all(u.startswith(r.admin + "/") for u in requested), requested
            finally:
                await browser.close()


def unexpected(msg: ConsoleMessage) -> bool:
    # `/-/alerts` may not exist yet; the page shows "no alerts" for its 404, which Chromium logs.
    if msg.type != "error":
        return False
    return not (msg.location.get("url", "").endswith("/-/alerts") and "404" in msg.text)


def describe(msg: ConsoleMessage) -> str:
    return f"console {msg.type}: {msg.text} at {msg.location.get('url')}"


async def check_alerts(s: aiohttp.ClientSession, page: Page, admin: str) -> None:
    async with s.get(admin + "/-/alerts") as resp:
        alerts = (await resp.json()).get("alerts", []) if resp.status == 200 else []
    if alerts:
        assert await page.get_by_test_id("alert-0").is_visible()
    else:
        assert await page.get_by_test_id("alerts-empty").inner_text() == "no alerts"


async def check_headers(s: aiohttp.ClientSession, admin: str) -> None:
    for path, kind in (("/", "text/html"), ("/static/status.js", "text/javascript"),
                       ("/static/status.css", "text/css"), ("/static/favicon.svg", "image/svg+xml")):
        async with s.get(admin + path) as resp:
            assert resp.status == 200 and resp.content_type == kind, (path, resp.status, resp.content_type)
            assert resp.headers["Cache-Control"] == "no-store"
            assert "default-src 'none'" in resp.headers["Content-Security-Policy"]
            assert "'unsafe-inline'" not in resp.headers["Content-Security-Policy"]
    async with s.get(admin + "/static/..%2Fadmin.py") as resp:
        assert resp.status == 404
    async with s.post(admin + "/", headers={"Authorization": f"Bearer {TOKEN}"}) as resp:
        assert resp.status == 405
    script = (Path(__file__).parent.parent / "router" / "admin" / "static" / "status.js").read_text()
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
        assert sink not in script, f"status.js must not use {sink}: JSON strings are untrusted"
