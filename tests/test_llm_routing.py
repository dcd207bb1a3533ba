"""LLM traffic end to end with the official OpenAI client: routing by the body's model, model
rewriting, streamed relay, usage, bad bodies, and the TTFT/TPOT the router measures."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import openai
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import BackendFactory, RouterFactory, base_config

ModelFactory = Callable[..., Awaitable[str]]
MESSAGES: list[Any] = [{"role": "user", "content": "Is this card payment suspicious?"}]


def llm_config(tmp: Path, urls: dict[str, str], served: dict[str, str], routes: list[dict[str, Any]]) -> dict[str, Any]:
    cfg = base_config(tmp, urls, routes)
    for name, model in served.items():
        cfg["backends"][name]["model"] = model
    return cfg


def client(url: str) -> openai.AsyncOpenAI:
    # No client retries: what the router does must be what the test sees.
    return openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=10)


def gated_backend(gate: asyncio.Event, sent: list[str]) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """Streams the first token, then waits for the test to open `gate` before the rest."""
    async def handler(request: web.Request) -> web.StreamResponse:
        body = json.loads(await request.read())
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for i, word in enumerate(["first", " second", " third"]):
            if i == 1:
                await gate.wait()
            chunk = {"id": "x", "object": "chat.completion.chunk", "created": 0, "model": body["model"],
                     "choices": [{"index": 0, "delta": {"content": word}, "finish_reason": None}]}
            await resp.write(f"data: {json.dumps(chunk)}\n\n".encode())
            sent.append(word)
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp
    return handler


async def test_routes_by_model_rewrites_it_and_streams_incrementally(
        make_router: RouterFactory, make_model: ModelFactory, make_backend: BackendFactory, tmp_path: Path) -> None:
    a = await make_model(name="served-a", version="v1")
    b = await make_model(name="served-b", version="v2")
    gate, sent = asyncio.Event(), []
    gated = await make_backend("gated", gated_backend(gate, sent))
    routes = [
        {"name": "llama", "match": {"path": "/v1/chat/completions", "model": ["llama-3-8b", "llama-3-8b-*"]},
         "primary": "a"},
        {"name": "mistral", "match": {"path": "/v1/chat/completions", "model": "mistral-*"}, "primary": "b"},
        {"name": "gated", "match": {"path": "/v1/chat/completions", "model": "gated"}, "primary": "gated"},
    ]
    r = await make_router(llm_config(tmp_path, {"a": a, "b": b, "gated": gated.url},
                                     {"a": "served-a", "b": "served-b"}, routes))
    async with client(r.url) as llm, client(a) as backend:
        await _model_routes(llm, backend, gate, sent, gated)


async def _model_routes(llm: openai.AsyncOpenAI, backend: openai.AsyncOpenAI, gate: asyncio.Event, sent: list[str],
                        gated: Any) -> None:
    direct = await backend.chat.completions.create(model="served-a", messages=MESSAGES)

    raw = await llm.chat.completions.with_raw_response.create(model="llama-3-8b-instruct", messages=MESSAGES)
    answer = raw.parse()
    assert raw.headers["x-model-backend"] == "a"
    assert answer.model == "served-a"  # the backend saw (and echoed) the rewritten name
    assert answer.choices[0].message.content == direct.choices[0].message.content
    assert answer.usage == direct.usage

    stream = await llm.chat.completions.create(model="llama-3-8b", messages=MESSAGES, stream=True,
                                               stream_options={"include_usage": True})
    chunks = [c async for c in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == direct.choices[0].message.content
    assert chunks[-1].usage == direct.usage and {c.model for c in chunks} == {"served-a"}

    other = await llm.chat.completions.create(model="mistral-7b", messages=MESSAGES)
    assert other.model == "served-b"

    # Incremental: the first chunk reaches the client while the backend still holds the rest.
    stream = await llm.chat.completions.create(model="gated", messages=MESSAGES, stream=True)
    it = stream.__aiter__()
    first = await asyncio.wait_for(it.__anext__(), 10)
    assert first.choices[0].delta.content == "first" and sent == ["first"]
    gate.set()
    rest = [c.choices[0].delta.content async for c in it]
    assert rest == [" second", " third"] and sent == ["first", " second", " third"]
    assert json.loads(gated.seen[-1]["body"]) == {"model": "gated", "messages": MESSAGES, "stream": True}


async def test_bad_bodies_on_a_model_route_get_400(
        make_router: RouterFactory, make_model: ModelFactory, tmp_path: Path) -> None:
    a = await make_model(name="served-a")
    routes = [{"name": "llama", "match": {"path": "/v1/chat/completions", "model": "llama-*"}, "primary": "a"}]
    r = await make_router(llm_config(tmp_path, {"a": a}, {"a": "served-a"}, routes))
    url = r.url + "/v1/chat/completions"
    async with aiohttp.ClientSession() as s:
        cases = [(b"not json", "not valid JSON"), (b'{"messages": []}', 'no "model"'),
                 (b'{"model": 5, "messages": []}', '"model" must be a string'),
                 (b'{"model": ["llama-1"]}', '"model" must be a string'), (b"[1, 2]", 'no "model"')]
        for body, message in cases:
            async with s.post(url, data=body, headers={"Content-Type": "application/json"}) as resp:
                assert resp.status == 400, body
                assert message in (await resp.json())["error"]["message"], body
        async with s.post(url, json={"model": "gpt-4", "messages": MESSAGES}) as resp:
            assert resp.status == 404  # readable, but no route serves that model
        async with s.post(url, data=b'{"model": "llama-3", "x": "' + b"a" * 100_000 + b'"}') as resp:
            assert resp.status == 413  # limits.max_body, before any parsing
        async with s.post(url, json={"model": "llama-3", "messages": MESSAGES}) as resp:
            assert resp.status == 200  # and the router kept serving


def scrape(text: str, name: str, labels: dict[str, str]) -> dict[str, float]:
    """Samples of a family whose labels include `labels`, by sample name and `le`."""
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name.startswith(name) and all(s.labels.get(k) == v for k, v in labels.items()):
                out[s.name + (f"|{s.labels['le']}" if "le" in s.labels else "")] = s.value
    return out


async def test_ttft_and_tpot_match_the_backend_delays(
        make_router: RouterFactory, make_model: ModelFactory, tmp_path: Path) -> None:
    a = await make_model(name="served-a", ttft_ms=80, stream_delay_ms=20)
    routes = [{"name": "llama", "match": {"path": "/v1/chat/completions", "model": "llama-*"}, "primary": "a"}]
    r = await make_router(llm_config(tmp_path, {"a": a}, {"a": "served-a"}, routes))
    async with client(r.url) as llm:
        for i in range(4):
            stream = await llm.chat.completions.create(
                model="llama-3", messages=[{"role": "user", "content": f"question {i}"}], stream=True)
            assert [c async for c in stream]
        await llm.chat.completions.create(model="llama-3", messages=MESSAGES)  # not streamed: usage only
    async with aiohttp.ClientSession() as s, s.get(r.admin + "/metrics") as resp:
        text = await resp.text()
    labels = {"route": "llama", "backend": "a"}
    ttft = scrape(text, "gen_ai_server_time_to_first_token_seconds", labels)
    tpot = scrape(text, "gen_ai_server_time_per_output_token_seconds", labels)
    tokens = scrape(text, "gen_ai_client_token_usage", {**labels, "gen_ai_token_type": "output"})
    n = ttft["gen_ai_server_time_to_first_token_seconds_count"]
    assert n == 5  # four streamed, one whole (its first token comes with the whole answer)
    # Nothing can come faster than the backend's delays; the OTel buckets bracket them.
    assert ttft["gen_ai_server_time_to_first_token_seconds_bucket|0.06"] == 0
    assert ttft["gen_ai_server_time_to_first_token_seconds_sum"] / n >= 0.08
    m = tpot["gen_ai_server_time_per_output_token_seconds_count"]
    assert m == 4
    assert tpot["gen_ai_server_time_per_output_token_seconds_bucket|0.01"] == 0
    mean_tpot = tpot["gen_ai_server_time_per_output_token_seconds_sum"] / m
    assert 0.02 <= mean_tpot < 0.08, mean_tpot
    assert tokens["gen_ai_client_token_usage_count"] == 5 and tokens["gen_ai_client_token_usage_sum"] > 20
    # Streams without usage are counted from their content events, and said so.
    counted = scrape(text, "router_llm_responses", {**labels, "usage": "counted"})
    reported = scrape(text, "router_llm_responses", {**labels, "usage": "reported"})
    assert list(counted.values()) == [4.0] and list(reported.values()) == [1.0]
