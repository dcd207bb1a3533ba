"""LLM rollout gates end to end: TTFT (live split) and the pairwise judge (shadowed), and a judge
that hangs or talks nonsense changes nothing for clients."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path
from typing import Any

import aiohttp

from tests.helpers import RouterFactory
from tests.test_llm_routing import ModelFactory, client, llm_config, scrape

NO_CLASSIC_GATES = {"min_agreement": None, "max_latency_ratio": None, "max_error_rate_increase": None}


def policy(steps: list[float], **gates: Any) -> dict[str, Any]:
    return {"steps": steps, "interval": "0s", "min_samples": 30, "max_duration": "3m",
            "gates": {**NO_CLASSIC_GATES, **gates}}


def route(name: str, primary: str, candidate: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "match": {"path": "/v1/chat/completions", "model": f"{name}-*"}, "primary": primary,
            "candidate": candidate, **extra}


async def phase(s: aiohttp.ClientSession, admin: str, name: str) -> str:
    async with s.get(f"{admin}/-/routes/{name}/rollout") as r:
        return str((await r.json())["phase"])


async def reasons(admin: str, names: list[str]) -> dict[str, str]:
    async with aiohttp.ClientSession() as s:
        out = {}
        for name in names:
            async with s.get(f"{admin}/-/routes/{name}/rollout?tail=1") as r:
                out[name] = str((await r.json())["last_decision"].get("reason"))
        return out


async def drive(url: str, admin: str, until: dict[str, set[str]], *, stream: bool, limit_s: float = 150) -> dict[str, str]:
    """Requests on every route (a few clients each) until each route's rollout reaches a phase in its set."""
    done = asyncio.Event()
    rng = random.Random(3)

    async def user(name: str) -> None:
        async with client(url) as llm:
            while not done.is_set():
                messages: Any = [{"role": "user", "content": f"question {rng.random()}"}]
                if stream:
                    chunks = await llm.chat.completions.create(model=f"{name}-1", messages=messages, stream=True,
                                                               max_tokens=3)  # short answers: a cheaper test
                    assert [c async for c in chunks]
                else:
                    answer = await llm.chat.completions.create(model=f"{name}-1", messages=messages, max_tokens=3)
                    assert answer.choices

    users = [asyncio.create_task(user(name)) for name in until for _ in range(6)]
    try:
        async with aiohttp.ClientSession() as s, asyncio.timeout(limit_s):
            while True:
                phases = {name: await phase(s, admin, name) for name in until}
                if all(phases[name] in wanted for name, wanted in until.items()):
                    return phases
                await asyncio.sleep(0.2)
    except TimeoutError:
        raise AssertionError(f"no decision within {limit_s}s: {await reasons(admin, list(until))}") from None
    finally:
        done.set()
        await asyncio.gather(*users)


async def test_ttft_gate_rolls_back_a_slow_candidate_and_promotes_an_equal_one(
        make_router: RouterFactory, make_model: ModelFactory, tmp_path: Path) -> None:
    # TTFTs well above the scheduling noise of a loaded machine, and a gate between 1 and 3.
    urls = {"primary": await make_model(name="m", ttft_ms=100), "slow": await make_model(name="m", ttft_ms=300),
            "same": await make_model(name="m", ttft_ms=100)}
    gates = {"max_ttft_ratio": 1.8, "llm_quantile": 0.5}
    routes = [route("slow", "primary", "slow", rollout=policy([50, 100], **gates)),
              route("same", "primary", "same", rollout=policy([50, 100], **gates))]
    r = await make_router(llm_config(tmp_path, urls, dict.fromkeys(urls, "m"), routes))
    phases = await drive(r.url, r.admin, {"slow": {"rolled_back", "promoted", "paused"},
                                          "same": {"rolled_back", "promoted", "paused"}}, stream=True)
    assert phases == {"slow": "rolled_back", "same": "promoted"}
    async with aiohttp.ClientSession() as s, s.get(f"{r.admin}/-/routes/slow/rollout?tail=20") as resp:
        info = await resp.json()
    gate = next(g for g in info["last_decision"]["gates"] if g["gate"] == "ttft")
    assert gate["verdict"] == "fail" and gate["low"] > 1.8
    tokens = info["last_decision"]["evidence"]["output_tokens"]  # mean per answer, and their ratio
    assert tokens["candidate"] > 0 and tokens["ratio"] == tokens["candidate"] / tokens["primary"]


async def test_judge_gate_follows_the_judges_preference(
        make_router: RouterFactory, make_model: ModelFactory, tmp_path: Path) -> None:
    urls = {"primary": await make_model(name="m"), "cand": await make_model(name="m", signature="[cand]")}
    judges = {"win": await make_model(judge_favour="[cand]", judge_percent=70),
              "lose": await make_model(judge_favour="[cand]", judge_percent=30),
              "hang": await make_model(judge_favour="[cand]", latency_ms=3000),
              "garbage": await make_model(judge_favour="[cand]", judge_garbage=1.0)}

    def shadow(judge: str) -> dict[str, Any]:
        return {"backend": "cand", "compare": {"format": "openai", "judge": {
            "url": judges[judge], "model": "judge", "sample_percent": 100, "max_per_minute": 10_000,
            "timeout": "300ms" if judge == "hang" else "5s"}}}

    gates = policy([0, 100], min_judge_win_rate=0.5) | {"min_samples": 100}
    routes = [route(name, "primary", "cand", shadow=shadow(name), rollout=gates) for name in ("win", "lose")]
    routes += [{"name": name, "match": {"path": "/v1/chat/completions", "model": f"{name}-*"}, "primary": "primary",
                "shadow": shadow(name)} for name in ("hang", "garbage")]
    r = await make_router(llm_config(tmp_path, urls, dict.fromkeys(urls, "m"), routes))
    # A judge that hangs or answers nonsense: clients get exactly the live model's answer.
    async with client(r.url) as llm, client(urls["primary"]) as direct:
        for name in ("hang", "garbage"):
            for i in range(3):
                messages: Any = [{"role": "user", "content": f"q{i}"}]
                got = await llm.chat.completions.create(model=f"{name}-1", messages=messages)
                want = await direct.chat.completions.create(model="m", messages=messages)
                assert got.choices[0].message.content == want.choices[0].message.content
    phases = await drive(r.url, r.admin, {"win": {"promoted", "rolled_back", "paused"},
                                          "lose": {"promoted", "rolled_back", "paused"}}, stream=False)
    assert phases == {"win": "promoted", "lose": "rolled_back"}
    async with aiohttp.ClientSession() as s:
        async with asyncio.timeout(10):
            while True:  # the failing judges' verdicts are counted once their calls end
                async with s.get(r.admin + "/metrics") as resp:
                    text = await resp.text()
                hung = scrape(text, "router_llm_judge_total", {"route": "hang", "result": "timeout"})
                garbled = scrape(text, "router_llm_judge_total", {"route": "garbage", "result": "unparseable"})
                if hung and garbled:
                    break
                await asyncio.sleep(0.1)
    assert not scrape(text, "router_llm_judge_total", {"route": "hang", "result": "win"})
    assert scrape(text, "router_llm_judge_total", {"route": "win", "result": "win"})
    async with aiohttp.ClientSession() as s, s.get(f"{r.admin}/-/routes/win/shadow") as resp:
        report = (await resp.json())["llm"]
    judge = report["judge"]
    assert judge["win"] > judge["loss"] > 0 and judge["tie"] == 0 and 0.5 < judge["win_rate"] < judge["high"]
    assert report["ttft_seconds"]["live"]["p50"] > 0 and report["mean_output_tokens"]["shadow"] > 0
