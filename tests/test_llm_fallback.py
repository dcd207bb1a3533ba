"""Fallback for LLM routes: 429 with Retry-After, connect failure, no first token in time; and
never once the stream has begun."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
from aiohttp import web

from tests.helpers import BackendFactory, RouterFactory, free_port
from tests.test_llm_routing import MESSAGES, ModelFactory, client, llm_config, scrape


async def requests_seen(url: str) -> int:
    async with aiohttp.ClientSession() as s, s.get(url + "/-/stats") as r:
        return int((await r.json())["requests"])


def route(name: str, primary: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "match": {"path": "/v1/chat/completions", "model": f"{name}-*"}, "primary": primary,
            "fallback": ["spare"], **extra}


async def dies_mid_stream(request: web.Request) -> web.StreamResponse:
    """Two tokens, then the connection drops."""
    await request.read()
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    for word in ("Hello", " there"):
        chunk = {"id": "d", "object": "chat.completion.chunk", "created": 0, "model": "served",
                 "choices": [{"index": 0, "delta": {"content": word}, "finish_reason": None}]}
        await resp.write(f"data: {json.dumps(chunk)}\n\n".encode())
    assert request.transport is not None
    request.transport.close()
    return resp


async def test_fallback_on_429_honours_retry_after_and_never_after_streaming_began(
        make_router: RouterFactory, make_model: ModelFactory, make_backend: BackendFactory, tmp_path: Path) -> None:
    busy = await make_model(name="served", reject_rate=1.0, retry_after_s=2)
    spare = await make_model(name="served")
    slow = await make_model(name="served", ttft_ms=5000)
    dying = await make_backend("dying", dies_mid_stream)
    urls = {"busy": busy, "spare": spare, "slow": slow, "dying": dying.url, "gone": f"http://127.0.0.1:{free_port()}"}
    routes = [route("busy", "busy"), route("gone", "gone"), route("slow", "slow", first_token_timeout="300ms"),
              route("dying", "dying")]
    r = await make_router(llm_config(tmp_path, urls, dict.fromkeys(urls, "served"), routes))
    async with client(r.url) as llm:
        refused_at = time.monotonic()  # the 429 came later, so its 2 s of cooling end after refused_at + 2
        raw = await llm.chat.completions.with_raw_response.create(model="busy-1", messages=MESSAGES)
        assert raw.headers["x-model-backend"] == "spare" and raw.parse().choices[0].message.content
        assert await requests_seen(busy) == 1
        # While it cools down the busy backend gets nothing; then it is tried again (and refuses again).
        while await requests_seen(busy) == 1:
            assert time.monotonic() - refused_at < 10, "the busy backend was never tried again"
            raw = await llm.chat.completions.with_raw_response.create(model="busy-1", messages=MESSAGES)
            assert raw.headers["x-model-backend"] == "spare"
            if time.monotonic() - refused_at < 2.0:  # that request was sent while cooling
                assert await requests_seen(busy) == 1
            await asyncio.sleep(0.1)  # pace the probe; the assertion is on the backend's count, not time
        assert time.monotonic() - refused_at >= 2.0

        raw = await llm.chat.completions.with_raw_response.create(model="gone-1", messages=MESSAGES)
        assert raw.headers["x-model-backend"] == "spare"
        stream = await llm.chat.completions.create(model="slow-1", messages=MESSAGES, stream=True)
        text = "".join([c.choices[0].delta.content or "" async for c in stream])
        assert text  # the slow backend's head was held back and dropped; the spare's answer came instead

        spare_before = await requests_seen(spare)
        stream = await llm.chat.completions.create(model="dying-1", messages=MESSAGES, stream=True)
        got: list[str] = []
        with pytest.raises((openai.APIError, openai.APIConnectionError)):
            async for c in stream:
                got.append(c.choices[0].delta.content or "")
        assert got == ["Hello", " there"]  # what was relayed stays the only answer ...
        assert await requests_seen(spare) == spare_before  # ... and no fallback was tried
    async with aiohttp.ClientSession() as s, s.get(r.admin + "/metrics") as resp:
        text = await resp.text()
    reasons = {k: scrape(text, "router_llm_fallbacks_total", {"route": name, "backend": backend, "reason": reason})
               for k, (name, backend, reason) in {"429": ("busy", "busy", "429"),
                                                  "cooling": ("busy", "busy", "retry_after"),
                                                  "connect": ("gone", "gone", "connect_failure"),
                                                  "ttft": ("slow", "slow", "first_token_timeout")}.items()}
    assert reasons["429"] == {"router_llm_fallbacks_total": 2.0}
    assert reasons["cooling"]["router_llm_fallbacks_total"] >= 1
    assert reasons["connect"] == reasons["ttft"] == {"router_llm_fallbacks_total": 1.0}
    assert not scrape(text, "router_llm_fallbacks_total", {"route": "dying"})
