"""The status page's views over time, in real headless Chromium: the 15-minute charts and the gates'
progress match `/-/status`, the first view carries its data, a rollback marks figures stale, the
mirror's connections are shown, and fifty routes stay usable."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from playwright.async_api import Browser, Page, async_playwright

from router.admin.statuspage import data_block
from tests.helpers import TOKEN, BackendFactory, RouterFactory, base_config, eventually, get_json
from tests.test_statuspage import CHROMIUM, CHROMIUM_ARGS, FIGURES_JS, ROUTE, routes, send, settled, unexpected

ModelFactory = Callable[..., Awaitable[str]]
P = f"route-{ROUTE}"


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: run `make deps` (it installs the Debian chromium package)")
    async with async_playwright() as pw:
        b = await pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            await b.close()


async def open_page(browser: Browser, errors: list[str]) -> Page:
    page = await browser.new_page()
    page.on("console", lambda msg: errors.append(f"console: {msg.text}") if unexpected(msg) else None)
    page.on("pageerror", lambda exc: errors.append(f"uncaught: {exc}"))
    return page


async def shown(page: Page) -> dict[str, dict[str, str | None]]:
    figures: dict[str, dict[str, str | None]] = await page.evaluate(FIGURES_JS)
    return figures


def value(figures: dict[str, dict[str, str | None]], testid: str) -> float | None:
    raw = figures[testid]["value"]
    return float(raw) if raw else None


async def fraud_router(make_router: RouterFactory, make_model: ModelFactory, tmp_path: Path) -> tuple[Any, Any]:
    v1, v2 = await make_model(version="v1"), await make_model(version="v2", perturb=3.0, seed=5)
    r = await make_router(base_config(tmp_path, {"v1": v1, "v2": v2}, routes()))
    return r, random.Random(11)


def check_series(figures: dict[str, dict[str, str | None]], route: dict[str, Any]) -> None:
    series = route["series"]["backends"]
    assert set(series) == set(route["requests_by_backend"]), series.keys()
    for backend, s in series.items():
        p = f"{P}-series-{backend}"
        # Every request so far is within the last 15 minutes.
        assert s["total"]["requests"] == route["requests_by_backend"][backend]
        assert value(figures, f"{p}-requests") == s["total"]["requests"]
        assert value(figures, f"{p}-error-rate") == s["total"]["error_rate"]
        for key in ("rate", "p50", "p99"):
            assert value(figures, f"{p}-{key}") == s["latest"][key], (backend, key)
    for key in ("rate", "error_rate", "p50", "p99"):
        assert f"{P}-chart-{key}" in figures


def check_gates(figures: dict[str, dict[str, str | None]], route: dict[str, Any]) -> None:
    prog = route["rollout"]["progress"]
    assert [g["gate"] for g in prog["gates"]] == ["agreement", "error_rate"]  # latency is off in routes()
    for g in prog["gates"]:
        p = f"{P}-gate-{g['gate']}"
        assert figures[f"{p}-verdict"]["text"] == g["verdict"] == "inconclusive"  # min_samples is out of reach
        assert value(figures, f"{p}-n") == g["n"] and value(figures, f"{p}-min-samples") == 100000
        for key in ("estimate", "low", "high", "threshold"):
            assert value(figures, f"{p}-{key}") == g[key], (g["gate"], key)
    agreement = prog["gates"][0]
    assert value(figures, f"{P}-gate-agreement-llr") == agreement["sprt"]["llr"]
    assert agreement["sprt"]["fail_at"] < agreement["sprt"]["llr"] < agreement["sprt"]["pass_at"]
    assert value(figures, f"{P}-earliest-advance") == prog["timing"]["earliest_advance_at"]
    assert value(figures, f"{P}-deadline") == prog["timing"]["deadline_at"]


async def test_first_view_has_charts_gates_and_connections_without_any_fetch(
        make_router: RouterFactory, make_model: ModelFactory, tmp_path: Path, browser: Browser) -> None:
    r, rng = await fraud_router(make_router, make_model, tmp_path)
    async with aiohttp.ClientSession() as s:
        await send(s, r.url, range(50), rng)
        route, shadow, _ = await settled(s, r.admin)
        status = await get_json(s, r.admin + "/-/status")
        route = status["routes"][0]
        errors: list[str] = []
        page = await open_page(browser, errors)
        fetched: list[str] = []
        # The admin API is unreachable from the page: whatever it shows came with the HTML.
        await page.route("**/-/**", lambda rt: (fetched.append(rt.request.url), rt.abort()))
        await page.goto(r.admin + "/", wait_until="load")
        figures = await shown(page)  # at once: no waiting for a poll

        total = sum(route["requests_by_backend"].values())
        assert value(figures, f"{P}-requests-total") == total
        assert "Loading" not in await page.inner_text("main")
        check_series(figures, route)
        check_gates(figures, route)
        assert value(figures, f"{P}-last-compared") == shadow["last_compared_at"] is not None
        # The mirror's own pool to v2 holds the connections the copies used.
        v2 = status["backends"]["v2"][0]
        assert v2["mirror"] is not None and v2["mirror"]["idle"] + v2["mirror"]["busy"] >= 1
        assert value(figures, "backend-v2-0-mirror-idle") == v2["mirror"]["idle"]
        assert value(figures, "backend-v1-0-idle") == status["backends"]["v1"][0]["idle"]
        assert fetched == [] and errors == []


async def test_polled_views_match_the_status_json_and_a_rollback_marks_figures_stale(
        make_router: RouterFactory, make_model: ModelFactory, tmp_path: Path, browser: Browser) -> None:
    r, rng = await fraud_router(make_router, make_model, tmp_path)
    async with aiohttp.ClientSession() as s:
        errors: list[str] = []
        page = await open_page(browser, errors)
        await page.goto(r.admin + "/")
        assert await page.get_by_test_id(f"{P}-series-empty").is_visible()  # no traffic yet

        await send(s, r.url, range(40), rng)
        route, _, _ = await settled(s, r.admin)
        total = sum(route["requests_by_backend"].values())
        await page.wait_for_function(
            """([id, v]) => document.querySelector(`[data-testid="${id}"]`)?.dataset.value === v""",
            arg=[f"{P}-series-v1-requests", str(route["requests_by_backend"]["v1"])], timeout=8000)
        status = await get_json(s, r.admin + "/-/status")
        check_series(await shown(page), status["routes"][0])
        check_gates(await shown(page), status["routes"][0])
        assert await page.get_by_test_id(f"{P}-stale").count() == 0

        async with s.post(f"{r.admin}/-/routes/{ROUTE}/rollback", headers={"Authorization": f"Bearer {TOKEN}"}) as resp:
            assert resp.status == 200, await resp.text()
        stale = page.get_by_test_id(f"{P}-stale")
        await stale.wait_for(state="visible", timeout=8000)
        status = await get_json(s, r.admin + "/-/status")
        route = status["routes"][0]
        assert route["stale"]["reason"] == "rolled_back" and route["rollout"]["progress"]["final"] is True
        assert float(await stale.get_attribute("data-value") or "nan") == route["stale"]["since"]
        assert await page.get_by_test_id(f"{P}-gates-final").is_visible()
        assert "no longer change" in await page.get_by_test_id(f"{P}-last-compared").locator("..").inner_text()
        assert total == sum(route["requests_by_backend"].values()) and errors == []


async def test_fifty_routes_render_and_each_is_findable(make_router: RouterFactory, make_backend: BackendFactory,
                                                        tmp_path: Path, browser: Browser) -> None:
    a, b = await make_backend("a"), await make_backend("b")
    names = [f"model-{i:02d}" for i in range(50)]
    cfg_routes: list[dict[str, Any]] = [{"name": n, "match": {"path_prefix": f"/{n}/"}, "primary": "a", "candidate": "b",
                                         "split": {"candidate_percent": 10}} for n in names]
    for rc in cfg_routes[::10]:  # a few with a shadow and a rollout, as a real table would have
        rc["shadow"] = {"backend": "b", "compare": {"format": "json", "paths": ["$.backend"]}}
        rc["rollout"] = {"steps": [0, 100], "interval": "1h", "min_samples": 1000, "max_duration": "2h"}
    r = await make_router(base_config(tmp_path, {"a": a.url, "b": b.url}, cfg_routes))
    async with aiohttp.ClientSession() as s:
        for n in names[::7]:
            async with s.post(f"{r.url}/{n}/predict", json={"x": 1}) as resp:
                assert resp.status == 200
        await eventually(lambda: routes_with_traffic(s, r.admin, 8), "traffic on 8 routes in /-/status")
        errors: list[str] = []
        page = await open_page(browser, errors)
        await page.goto(r.admin + "/")
        assert await page.locator("#routes article[data-route]").count() == 50
        assert await page.locator("#route-index a").count() == 50

        await page.get_by_test_id("route-filter").fill("model-37")
        assert await page.get_by_test_id("route-model-37").is_visible()
        assert await page.locator("#routes article[data-route]:visible").count() == 1
        await page.get_by_test_id("route-filter").fill("")
        assert await page.locator("#routes article[data-route]:visible").count() == 50

        await page.get_by_test_id("index-model-42").click()
        await eventually(lambda: in_viewport(page, "route-model-42"), "route model-42 scrolled into view")
        # The page keeps polling with fifty routes and stays free of errors.
        await page.wait_for_function("() => document.querySelector('[data-testid=last-updated]').textContent !== 'never'")
        figures = await shown(page)
        assert value(figures, "route-model-00-requests-total") == 1 and errors == []


async def routes_with_traffic(s: aiohttp.ClientSession, admin: str, n: int) -> bool:
    status = await get_json(s, admin + "/-/status")
    return sum(1 for rt in status["routes"] if rt["series"]["backends"]) == n


async def in_viewport(page: Page, testid: str) -> bool:
    box = await page.get_by_test_id(testid).bounding_box()
    height = await page.evaluate("() => window.innerHeight")
    return box is not None and -2 < box["y"] < height  # its top in the window (to within subpixel scrolling)


def test_the_embedded_state_cannot_end_its_script_element() -> None:
    block = data_block({"path": "/x</script><script>alert(1)</script>", "note": "<!-- & -->"}).decode()
    inner = block.removeprefix('<script type="application/json" id="initial-state">').removesuffix("</script>")
    assert "<" not in inner and ">" not in inner and "&" not in inner
    import json

    assert json.loads(inner)["path"] == "/x</script><script>alert(1)</script>"
