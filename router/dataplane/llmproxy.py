"""The LLM side of one proxied request: model rewrite, token meter, fallback, first-token timeout.

An `Exchange` on an LLM route owns one `LlmExchange` and calls it at fixed points; other routes
have none and pay one `is not None` per callback. A fallback is only ever taken while nothing has
reached the client: on a connect failure, a 429 or 503 head (whose `Retry-After` keeps that
backend out for that long), or no body byte within `first_token_timeout` (the response head is held
back until then, since servers such as vLLM send it before the first token). Once a byte has been
relayed, a failure ends the stream with an error event and a cut connection, never a second answer.
"""

from __future__ import annotations

import asyncio
import json
from time import monotonic, perf_counter
from typing import TYPE_CHECKING

from router.analysis.llm import TokenMeter, retry_after, rewrite_model

if TYPE_CHECKING:
    from router.config import RouteConfig
    from router.dataplane.balancer import BackendGroup
    from router.dataplane.proxy import Exchange
    from router.dataplane.request import Header
    from router.dataplane.upstream import UpstreamPool

OVERLOADED = frozenset({429, 503})


class LlmExchange:
    """Per-request LLM state, driven by its `Exchange`."""

    __slots__ = ("ex", "fell", "held", "meter", "rc", "rerouted", "rewritten", "timer")

    def __init__(self, ex: Exchange, rc: RouteConfig) -> None:
        self.ex = ex
        self.rc = rc
        judged = rc.shadow is not None and rc.shadow.judge is not None
        self.meter = TokenMeter(keep_text=judged)
        self.fell = False  # one fallback per request
        self.rerouted = False  # sent past a cooling backend: not a rollout sample of either side
        self.held: bytes | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.rewritten: dict[str, bytes] = {}

    # -- before sending
    def around_cooling(self, group: BackendGroup, pool: UpstreamPool, now: float) -> tuple[BackendGroup, UpstreamPool]:
        """A backend cooling down after Retry-After gets nothing: the next fallback takes its request."""
        llm = self.ex.rt.ledger.llm
        if not self.rc.fallback or not llm.cooling(group.name, now):
            return group, pool
        for name in self._chain(group.name):
            if not llm.cooling(name, now):
                llm.fallbacks[(self.rc.name, group.name, "retry_after")] += 1
                alt = self.ex.rt.groups[name]
                self.rerouted = True
                return alt, alt.pick(now) or alt.pick(now, panic=True) or pool
        return group, pool

    def sending(self, pool: UpstreamPool) -> bytes | None:
        """The body for this backend (None: unchanged); starts the meter and the first-token clock."""
        self.meter.start(perf_counter())
        t = self.rc.first_token_timeout
        if t is not None and not self.fell:
            self._cancel()
            self.timer = self.ex.client.loop.call_later(t, self._first_token_late)
        group = self.ex.group
        model = group.backend.model if group is not None else None
        if model is None:
            return None
        body = self.rewritten.get(model)
        if body is None:
            body = self.rewritten[model] = rewrite_model(self.ex.req.body, model)
        return body

    # -- the response
    def refused(self, status: int, headers: list[Header]) -> bool:
        """A 429/503 head: fall back if possible (True: this response is dropped)."""
        if status not in OVERLOADED or not self.rc.fallback:
            self.meter.head(headers)
            return False
        wait = retry_after(headers, 0.0)
        if wait > 0:
            self.ex.rt.ledger.llm.cool(self.ex.backend, monotonic() + wait)
        return self.fall_back(str(status))

    def hold(self, head: bytes) -> bool:
        """Keep the head back while a first-token timeout is running (True: held)."""
        if self.timer is None:
            return False
        self.held = head
        return True

    def body(self, data: bytes) -> None:
        self.meter.feed(data, perf_counter())
        self.release()

    def release(self) -> None:
        """The first body byte (or the end): the held head goes out, no fallback from here on."""
        self._cancel()
        if self.held is not None:
            self.ex.out.append(self.held)
            self.ex.head_sent = True
            self.held = None

    def stream_error(self, message: str) -> None:
        """A failure after the stream began: an SSE error event before the cut, so that OpenAI
        clients raise an error rather than take a short answer for a whole one."""
        ex = self.ex
        if self.meter.stream and ex.chunked:
            event = b"data: " + json.dumps({"error": {"message": f"upstream failed mid-stream: {message}",
                                                      "type": "server_error"}}).encode() + b"\n\n"
            ex.out += (b"%x\r\n" % len(event), event, b"\r\n")

    def finished(self, status: int, broken: bool) -> None:
        self._cancel()
        self.held = None
        ex = self.ex
        if broken or not 200 <= status < 300 or not ex.route_name:
            return
        outcome = self.meter.outcome(perf_counter())
        ex.rt.ledger.llm_live(ex.route_name, ex.backend, outcome, sample=not (ex.fell_back or self.rerouted))
        if ex.pair is not None:
            ex.pair.live_llm = outcome

    # -- fallback
    def fall_back(self, reason: str) -> bool:
        """Send the request to the next fallback backend, if nothing reached the client yet."""
        ex = self.ex
        if self.fell or ex.head_sent or ex.done or perf_counter() >= ex.deadline or ex.group is None:
            return False
        now = monotonic()
        llm = ex.rt.ledger.llm
        name = next((n for n in self._chain(ex.backend) if not llm.cooling(n, now)), None)
        if name is None or not ex.group.spend():
            return False
        llm.fallbacks[(self.rc.name, ex.backend, reason)] += 1
        self.fell = True
        self._cancel()
        self.held = None
        ex.status = 0
        ex._drop_upstream()
        ex.upstream = None
        group = ex.rt.groups[name]
        ex.backend, ex.group, ex.fell_back = name, group, True  # not a rollout sample of either side
        pool = group.pick(now) or group.pick(now, panic=True)
        assert pool is not None
        ex._dispatch(pool)
        return True

    def _chain(self, current: str) -> list[str]:
        return [n for n in self.rc.fallback if n != current]

    def _first_token_late(self) -> None:
        self.timer = None
        if not self.fall_back("first_token_timeout") and self.held is not None:
            self.release()  # nowhere to go: relay what there is and let the route timeout rule
            self.ex.flush()

    def _cancel(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

