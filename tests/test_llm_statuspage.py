"""The status page shows an LLM route's paired live/shadow TTFT and TPOT and the judge's verdicts,
as the admin API reports them (real headless Chromium)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from playwright.async_api import async_playwright

from tests.helpers import RouterFactory
from tests.test_llm_routing import ModelFactory, client, llm_config
from tests.test_statuspage import CHROMIUM, CHROMIUM_ARGS, FIGURES_JS, VALUE_IS_JS


async def settled_report(admin: str, judged: int) -> dict[str, Any]:
    async with aiohttp.ClientSession() as s, asyncio.timeout(15):
        while True:
            async with s.get(admin + "/-/routes/chat/shadow") as resp:
                report = await resp.json()
            judge = report.get("llm", {}).get("judge", {})
            if sum(judge.get(k, 0) for k in ("win", "tie", "loss")) == judged:
                return dict(report["llm"])
            await asyncio.sleep(0.05)


async def test_status_page_shows_llm_figures(make_router: RouterFactory, make_model: ModelFactory,
                                             tmp_path: Path) -> None:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: run `make deps` (it installs the Debian chromium package)")
    urls = {"a": await make_model(name="m", ttft_ms=20, stream_delay_ms=5),
            "b": await make_model(name="m", ttft_ms=40, stream_delay_ms=5, signature="(b)")}
    judge = await make_model(judge_favour="(b)", judge_percent=75)
    routes = [{"name": "chat", "match": {"path": "/v1/chat/completions", "model": "chat-*"}, "primary": "a",
               # Every one of the 8 requests is judged: pacing never drops a copy (max_concurrency),
               # nor the judge a call however slowly it answers under load (its own max_concurrency).
               "shadow": {"backend": "b", "max_concurrency": 100_000, "compare": {"format": "openai", "judge": {
                   "url": judge, "model": "judge", "sample_percent": 100, "max_per_minute": 1000,
                   "max_concurrency": 100}}}}]
    r = await make_router(llm_config(tmp_path, urls, {"a": "m", "b": "m"}, routes))
    async with client(r.url) as llm:
        for i in range(8):
            stream = await llm.chat.completions.create(
                model="chat-1", messages=[{"role": "user", "content": f"q{i}"}], stream=True)
            assert [c async for c in stream]
    report = await settled_report(r.admin, 8)
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page()
            await page.goto(r.admin + "/")
            p = "route-chat"
            await page.wait_for_function(VALUE_IS_JS, arg=[f"{p}-judge-win-rate", str(report["judge"]["win_rate"])],
                                         timeout=8000)
            shown: dict[str, dict[str, str | None]] = await page.evaluate(FIGURES_JS)
        finally:
            await browser.close()
    for metric in ("ttft", "tpot"):
        for side in ("live", "shadow"):
            for q in ("p50", "p95", "p99"):
                value = shown[f"{p}-{metric}-latency-{side}-{q}"]["value"]
                assert float(value or "nan") == report[f"{metric}_seconds"][side][q]
    assert float(shown[f"{p}-judge-low"]["value"] or "nan") == report["judge"]["low"]
    assert float(shown[f"{p}-tokens-shadow"]["value"] or "nan") == report["mean_output_tokens"]["shadow"]
