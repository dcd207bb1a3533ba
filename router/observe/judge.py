"""The pairwise judge: an OpenAI-compatible model that says which of two answers is better.

Blind: the live and shadow answers go in a random order as "A" and "B", with no backend names.
It runs after both answers are in, as a background task, bounded per route in concurrency and in
calls per minute; a pair over a bound is not judged (counted). A judge that fails, hangs past its
timeout or answers anything but A, B or TIE is counted by kind and changes nothing else: the live
response went out long before.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections.abc import Callable
from typing import Any

import aiohttp

from router.config.llmconfig import JudgeConfig

log = logging.getLogger("router.observe.judge")
_draw = random.random

INSTRUCTIONS = ("You compare two answers to the same request. Reply with exactly one word: A if answer A is "
                "better, B if answer B is better, TIE if they are equally good.")
MAX_QUESTION_CHARS = 8000


def question_of(body: bytes) -> str:
    """The request's messages (or prompt) as plain text for the judge; empty if unreadable."""
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError):
        return ""
    if not isinstance(doc, dict):
        return ""
    messages = doc.get("messages")
    if isinstance(messages, list):
        lines = [f"{m.get('role')}: {m.get('content')}" for m in messages if isinstance(m, dict)]
        return "\n".join(lines)[:MAX_QUESTION_CHARS]
    prompt = doc.get("prompt")
    return prompt[:MAX_QUESTION_CHARS] if isinstance(prompt, str) else ""


def judge_request(cfg: JudgeConfig, question: str, first: str, second: str) -> dict[str, Any]:
    text = f"Request:\n{question}\n\nAnswer A:\n{first}\n\nAnswer B:\n{second}"
    return {"model": cfg.model, "temperature": 0, "max_tokens": 4,
            "messages": [{"role": "system", "content": INSTRUCTIONS}, {"role": "user", "content": text}]}


def read_verdict(doc: object) -> str | None:
    """"A", "B" or "TIE" from a chat completion, else None."""
    try:
        content = doc["choices"][0]["message"]["content"]  # type: ignore[index]
    except (KeyError, IndexError, TypeError):
        return None
    if not isinstance(content, str):
        return None
    word = content.strip().strip(".").upper()
    return word if word in ("A", "B", "TIE") else None


def candidate_result(verdict: str, shadow_first: bool) -> str:
    """win / tie / loss for the candidate (the shadow side)."""
    if verdict == "TIE":
        return "tie"
    return "win" if (verdict == "A") == shadow_first else "loss"


class Judge:
    """Judges sampled pairs in the background; `record(result)` gets win, tie, loss or a failure kind."""

    def __init__(self) -> None:
        self.in_flight: dict[str, int] = {}
        self.minute: dict[str, tuple[float, int]] = {}  # route -> (minute start, calls in it)
        self.tasks: set[asyncio.Task[None]] = set()

    def submit(self, route: str, cfg: JudgeConfig, body: bytes, live: str, shadow: str,
               record: Callable[[str], None]) -> None:
        if _draw() * 100 >= cfg.sample_percent:
            return
        now = time.monotonic()
        start, calls = self.minute.get(route, (now, 0))
        if now - start >= 60:
            start, calls = now, 0
        if calls >= cfg.max_per_minute or self.in_flight.get(route, 0) >= cfg.max_concurrency:
            record("dropped")
            return
        self.minute[route] = (start, calls + 1)
        self.in_flight[route] = self.in_flight.get(route, 0) + 1
        task = asyncio.get_running_loop().create_task(self._judge(route, cfg, body, live, shadow, record))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _judge(self, route: str, cfg: JudgeConfig, body: bytes, live: str, shadow: str,
                     record: Callable[[str], None]) -> None:
        shadow_first = _draw() < 0.5
        first, second = (shadow, live) if shadow_first else (live, shadow)
        try:
            result = await self._ask(cfg, judge_request(cfg, question_of(body), first, second))
            record(candidate_result(result, shadow_first) if result in ("A", "B", "TIE") else result)
        except Exception as exc:  # the judge must never take anything down with it
            log.warning("route %s: judge failed: %r", route, exc)
            record("error")
        finally:
            self.in_flight[route] -= 1

    @staticmethod
    async def _ask(cfg: JudgeConfig, payload: dict[str, Any]) -> str:
        """A, B, TIE, or the failure kind: timeout, status_NXX, unparseable, unreachable."""
        timeout = aiohttp.ClientTimeout(total=cfg.timeout)
        try:
            async with aiohttp.ClientSession(timeout=timeout) as s, \
                    s.post(cfg.url + "/v1/chat/completions", json=payload) as r:
                if r.status != 200:
                    return f"status_{r.status // 100}xx"
                try:
                    doc = await r.json(content_type=None)
                except ValueError:
                    return "unparseable"
        except TimeoutError:
            return "timeout"
        except aiohttp.ClientError:
            return "unreachable"
        return read_verdict(doc) or "unparseable"

    async def close(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
