"""Shadow traffic: mirror live requests to another backend, compare the answers, record.

The live path never waits for a shadow: `Mirror.begin` is a few checks and, when the request is
mirrored, one write on a connection of the shadow's own pool (or a task to open one). Everything
after that happens in upstream callbacks. What is bounded, and counted when the bound is hit:
requests in flight per route (`max_concurrency`), the request size (`max_body`), and the bytes kept
of each response (`max_response`). Nothing is queued: a request over a bound is not mirrored.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import deque
from collections.abc import Mapping
from time import perf_counter
from typing import TYPE_CHECKING, Any

from router.balancer import BackendGroup, HealthRegistry, build_groups
from router.compare import Comparison, compare
from router.config import Config, RouteConfig, ShadowConfig
from router.judge import Judge
from router.llm import LlmOutcome, TokenMeter, rewrite_model
from router.llmstats import LlmState
from router.monitor import Finished
from router.proxy import upstream_request
from router.request import Header, Request
from router.shadowstats import ShadowStats
from router.upstream import UpstreamConnection, UpstreamError, UpstreamPool

if TYPE_CHECKING:
    from router.monitor import Monitor
    from router.rollout import WindowCounters
    from router.runtime import Runtime

log = logging.getLogger("router.shadow")
SHADOW_HEADER = b"X-Shadow-Request: 1\r\n"
_draw = random.random
# Comparing large bodies takes milliseconds: those go to a worker thread, off the event loop.
INLINE_COMPARE_BYTES = 64 * 1024
MAX_BACKLOG = 4096  # finished mirrored requests waiting for their turn; beyond, skipped and counted
PREVIEW_BYTES = 2048


class Side:
    """One response of a mirrored request: the live one, the shadow's, or the primary's repeat."""

    __slots__ = ("body", "content_type", "done", "error", "latency", "size", "started", "status", "truncated")

    def __init__(self, started: float) -> None:
        self.started = started
        self.status = 0
        self.content_type = "application/json"
        self.body: list[bytes] = []
        self.size = 0
        self.truncated = False
        self.error: str | None = None
        self.latency = 0.0
        self.done = False

    def head(self, status: int, headers: list[Header]) -> None:
        self.status = status
        for lname, _, value in headers:
            if lname == b"content-type":
                self.content_type = value.decode("latin-1")

    def capture(self, data: bytes, cap: int) -> None:
        if self.truncated:
            return
        if self.size + len(data) > cap:
            self.truncated = True
            self.body.clear()
            return
        self.body.append(data)
        self.size += len(data)

    @property
    def ok(self) -> bool:
        return self.error is None and 200 <= self.status < 300

    def text(self) -> bytes:
        return b"".join(self.body)


class CaptureSink:
    """Receives a shadow (or noise) response into a Side; enforces the shadow's timeout."""

    def __init__(self, pair: MirroredRequest, side: Side, timeout: float) -> None:
        self.pair = pair
        self.side = side
        self.upstream: UpstreamConnection | None = None
        self.task: asyncio.Task[None] | None = None
        self.timer = pair.loop.call_later(timeout, self.on_timeout)

    def on_head(self, status: int, headers: list[Header], connection: bytes | None) -> None:
        self.side.head(status, headers)
        if self.pair.shadow_meter is not None and self.side is self.pair.shadow:
            self.pair.shadow_meter.head(headers)

    def on_body(self, data: bytes) -> None:
        self.side.capture(data, self.pair.cfg.max_response)
        if self.pair.shadow_meter is not None and self.side is self.pair.shadow:
            self.pair.shadow_meter.feed(data, perf_counter())

    def on_complete(self) -> None:
        self._done(None)

    def on_error(self, error: UpstreamError) -> None:
        self._done(error.kind)

    def flush(self) -> None:
        pass

    def on_timeout(self) -> None:
        if self.task is not None:
            self.task.cancel()
        if self.upstream is not None and self.upstream.sink is self:
            self.upstream.abandon()
        self._done("timeout")

    def _done(self, error: str | None) -> None:
        side = self.side
        if side.done:
            return
        self.timer.cancel()
        side.error = error
        side.latency = perf_counter() - side.started
        side.done = True
        if side is self.pair.shadow:
            self.pair.shadow_latency(side.latency)
        self.pair.side_done()


class MirroredRequest:
    """A live request and its copies, compared once every side has finished."""

    def __init__(self, mirror: Mirror, route: RouteConfig, req: Request, stats: ShadowStats, noise: bool) -> None:
        self.mirror = mirror
        self.route = route
        assert route.shadow is not None
        self.cfg: ShadowConfig = route.shadow
        self.req = req
        self.stats = stats
        self.loop = asyncio.get_running_loop()
        now = perf_counter()
        self.live = Side(req.started)
        self.shadow = Side(now)
        self.noise = Side(now) if noise else None
        self.pending = 3 if noise else 2
        self.window: WindowCounters | None = None  # the rollout step window this request counts in
        self.monitor: Monitor | None = None  # for the prediction log's joined record
        self.live_llm: LlmOutcome | None = None  # LLM routes: set by the live Exchange
        self.shadow_meter: TokenMeter | None = None
        self.llm: LlmState | None = None

    # the live side, fed by the Exchange
    def live_head(self, status: int, headers: list[Header]) -> None:
        self.live.head(status, headers)

    def live_body(self, data: bytes) -> None:
        self.live.capture(data, self.cfg.max_response)

    def live_done(self, status: int, broken: bool) -> None:
        live = self.live
        if live.done:
            return
        live.status = live.status or status
        live.error = "incomplete" if broken else None
        live.latency = perf_counter() - live.started
        live.done = True
        self.side_done()

    def shadow_latency(self, seconds: float) -> None:
        s = self.stats
        s.latency_ewma = seconds if s.latency_ewma == 0 else 0.9 * s.latency_ewma + 0.1 * seconds

    def side_done(self) -> None:
        self.pending -= 1
        if self.pending == 0:
            self.mirror.finished(self)


class Mirror:
    """Owns the shadow pools, the per-route in-flight counts and the per-route stats."""

    def __init__(self) -> None:
        self.groups: dict[str, BackendGroup] = {}
        self._backlog: deque[MirroredRequest] = deque()
        self.stats: dict[str, ShadowStats] = {}
        self.in_flight: dict[str, int] = {}
        self.judge = Judge()

    # -- configuration (at start and on each reload)
    def configure(self, config: Config, health: HealthRegistry) -> list[UpstreamPool]:
        """Groups for every backend a shadow (or its noise copy) may reach, on pools of their own;
        stats kept for routes whose primary and shadow backend are unchanged. Returns pools no
        longer used."""
        caps: dict[str, int] = {}
        for route in config.routes:
            if route.shadow is not None:
                for name in (route.shadow.backend, route.primary):
                    caps[name] = caps.get(name, 0) + 2 * route.shadow.max_concurrency
        old = [p for g in self.groups.values() for p in g.pools]
        self.groups, removed = build_groups(config, health, old, caps)
        stats: dict[str, ShadowStats] = {}
        for route in config.routes:
            if route.shadow is not None:
                key = (route.primary, route.shadow.backend)
                prev_stats = self.stats.get(route.name)
                stats[route.name] = prev_stats if prev_stats and prev_stats.key == key else ShadowStats(*key)
        self.stats = stats
        return removed

    @property
    def pools(self) -> list[UpstreamPool]:
        return [p for g in self.groups.values() for p in g.pools]

    # -- the live path's only call
    def begin(self, rt: Runtime, route: RouteConfig, req: Request, live_backend: str) -> MirroredRequest | None:
        cfg = route.shadow
        if cfg is None or live_backend != route.primary or req.method not in cfg.methods:
            return None
        stats = self.stats.get(route.name)
        if stats is None:
            return None
        if cfg.percent < 100 and _draw() * 100 >= cfg.percent:
            return None
        if len(req.body) > cfg.max_body:
            stats.dropped["body_too_large"] += 1
            return None
        in_flight = self.in_flight.get(route.name, 0)
        now = perf_counter()
        if in_flight >= cfg.max_concurrency or now < stats.next_send:
            stats.dropped["concurrency"] += 1
            return None
        # Pace the copies at what the shadow can take (max_concurrency per its typical latency), so
        # they, and their answers, spread evenly instead of leaving and returning in bursts.
        stats.next_send = now + stats.latency_ewma / cfg.max_concurrency
        self.in_flight[route.name] = in_flight + 1
        stats.mirrored += 1
        noise = cfg.noise_percent > 0 and _draw() * 100 < cfg.noise_percent
        pair = MirroredRequest(self, route, req, stats, noise)
        pair.monitor = rt.monitor
        if route.rollout is not None and route.candidate == cfg.backend:
            pair.window = rt.rollouts.counters(route.name)
        timeout = cfg.timeout or route.timeout or rt.config.limits.request_timeout
        if rt.table.by_name[route.name].llm:
            pair.shadow_meter = TokenMeter(keep_text=cfg.judge is not None)
            pair.shadow_meter.start(perf_counter())
            pair.llm = rt.stats.llm
        self._send(self.groups[cfg.backend], req, rt.via, CaptureSink(pair, pair.shadow, timeout))
        if pair.noise is not None:
            self._send(self.groups[route.primary], req, rt.via, CaptureSink(pair, pair.noise, timeout))
        return pair

    def _send(self, group: BackendGroup, req: Request, via: bytes, sink: CaptureSink) -> None:
        pool = group.pick(time.monotonic(), panic=True)
        assert pool is not None
        model = group.backend.model
        data = upstream_request(req, pool.authority, via, SHADOW_HEADER,
                                body=rewrite_model(req.body, model) if model is not None else None)
        conn = pool.acquire_nowait()
        if conn is not None:
            sink.upstream = conn
            conn.send(data, sink)
        else:
            sink.task = asyncio.get_running_loop().create_task(self._connect_and_send(pool, data, sink))

    @staticmethod
    async def _connect_and_send(pool: UpstreamPool, data: bytes, sink: CaptureSink) -> None:
        try:
            conn = await pool.acquire(pool.connect_timeout)
        except UpstreamError as exc:
            sink.task = None
            sink.on_error(exc)
            return
        sink.task = None
        if sink.side.done:  # timed out while connecting
            pool.release(conn)
            return
        sink.upstream = conn
        conn.send(data, sink)

    # -- after every side is done
    def finished(self, pair: MirroredRequest) -> None:
        """Every side is done: free the slot now; account and compare on a later loop turn.

        Shadow answers tend to arrive in bursts (a slow shadow frees its slots together), so the
        work is queued and done one request per event-loop turn, between live requests, instead
        of stalling them for the whole burst.
        """
        name = pair.route.name
        self.in_flight[name] = max(0, self.in_flight.get(name, 0) - 1)
        if len(self._backlog) >= MAX_BACKLOG:
            pair.stats.skipped["compare_backlog"] += 1
            return
        self._backlog.append(pair)
        if len(self._backlog) == 1:
            asyncio.get_running_loop().call_soon(self._next)

    def _next(self) -> None:
        self._account(self._backlog.popleft())
        if self._backlog:
            asyncio.get_running_loop().call_soon(self._next)

    def _account(self, pair: MirroredRequest) -> None:
        stats = pair.stats
        live, shadow = pair.live, pair.shadow
        if pair.monitor is not None:
            pair.monitor.joined(_joined_record(pair))
        if not live.ok:
            stats.live_errors += live.error != "incomplete"
            stats.skipped["live_failed"] += 1
        if not shadow.ok:
            stats.shadow_errors += 1
            stats.shadow_error_kinds[shadow.error or f"status_{shadow.status // 100}xx"] += 1
        window = pair.window
        if window is not None and live.error != "incomplete":
            window.pair(live.ok, live.latency, shadow.ok, shadow.latency)
        if pair.shadow_meter is not None and live.ok and shadow.ok:
            self._account_llm(pair, pair.shadow_meter.outcome(shadow.started + shadow.latency))
        if not (live.ok and shadow.ok):
            return
        stats.live_latency.observe(live.latency)
        stats.shadow_latency.observe(shadow.latency)
        stats.paired_diff.observe(shadow.latency - live.latency)
        if live.truncated or shadow.truncated:
            stats.skipped["response_too_large"] += 1
            return
        noise = pair.noise if pair.noise is not None and pair.noise.ok and not pair.noise.truncated else None
        job = _CompareJob(pair, noise)
        if live.size + shadow.size <= INLINE_COMPARE_BYTES:
            job.record(job.run())
        else:
            future = asyncio.get_running_loop().run_in_executor(None, job.run)
            future.add_done_callback(lambda f: job.record(f.result()) if not f.cancelled() else None)


    def _account_llm(self, pair: MirroredRequest, shadow: LlmOutcome) -> None:
        """Paired LLM figures (same request on both sides), the step window's, and the judge."""
        live, window, route, judge = pair.live_llm, pair.window, pair.route.name, pair.cfg.judge
        if live is None or pair.llm is None:
            return
        llm = pair.llm
        llm.record_pair(route, live, shadow)
        if window is not None and pair.live.error != "incomplete":
            window.llm.record(False, live)
            window.llm.record(True, shadow)
        if judge is not None and live.text and shadow.text:
            def record(result: str) -> None:
                llm.judge[(route, result)] += 1
                if window is not None:
                    window.llm.verdict(result)
            self.judge.submit(route, judge, pair.req.body, live.text, shadow.text, record)


class _CompareJob:
    """The comparison of one mirrored request: pure `run`, then `record` on the event loop."""

    def __init__(self, pair: MirroredRequest, noise: Side | None) -> None:
        self.pair = pair
        self.noise = noise

    def run(self) -> tuple[Comparison, Comparison | None]:
        p = self.pair
        spec = p.cfg.compare
        live = p.live.text()
        main = compare(live, p.shadow.text(), spec, p.live.content_type, shadow_content_type=p.shadow.content_type)
        repeat = None
        if self.noise is not None:
            repeat = compare(live, self.noise.text(), spec, p.live.content_type,
                             shadow_content_type=self.noise.content_type)
        return main, repeat

    def record(self, result: tuple[Comparison, Comparison | None]) -> None:
        main, repeat = result
        p = self.pair
        stats = p.stats
        if main.error is not None:
            stats.extraction_errors += 1
            return
        stats.compared += 1
        stats.agreements += main.agree
        fields = dict(main.fields)
        stats.field_counts(stats.fields, fields)
        stats.mismatch_set(fields)
        if main.label_agree is not None:
            stats.label_n += 1
            stats.label_agree += main.label_agree
        if main.text_similarity is not None:
            stats.text_n += 1
            stats.text_similarity_sum += main.text_similarity
        if repeat is not None and repeat.error is None:
            stats.noise_samples += 1
            stats.field_counts(stats.noise_fields, dict(repeat.fields))
        if p.window is not None:
            # Agreement for the rollout gate leaves out fields already known to be noise.
            noise = stats.noise_set()
            p.window.compared(all(ok or name in noise for name, ok in fields.items()))
        if not main.agree:
            stats.recent.append(_diff_entry(p, fields))


def _joined_record(p: MirroredRequest) -> Finished:
    """The prediction log's record of a mirrored request: both outputs side by side."""
    live, shadow = p.live, p.shadow
    return Finished(p.req.request_id.decode("latin-1"), time.time(), p.route.name, p.route.primary, live.status,
                    live.latency, p.req.body, live.text() if not live.truncated else None, True,
                    shadow={"backend": p.cfg.backend, "status": shadow.status, "latency_s": shadow.latency,
                            "error": shadow.error, "response_body": shadow.text() if not shadow.truncated else None})


def _diff_entry(p: MirroredRequest, fields: Mapping[str, bool]) -> dict[str, Any]:
    return {
        "time": time.time(),
        "request_id": p.req.request_id.decode("latin-1"),
        "method": p.req.method.decode("latin-1"),
        "path": p.req.path,
        "fields": sorted(name for name, ok in fields.items() if not ok),
        "live": _preview(p.live.text()),
        "shadow": _preview(p.shadow.text()),
    }


def _preview(body: bytes) -> str:
    text = body[:PREVIEW_BYTES].decode("utf-8", "replace")
    return text + ("..." if len(body) > PREVIEW_BYTES else "")

