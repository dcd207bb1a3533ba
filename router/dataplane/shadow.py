"""Shadow traffic: mirror live requests to another backend, compare the answers, record.

The live path never waits for a shadow: `Mirror.begin` is a few checks and, when the request is
mirrored, one write on a connection of the shadow's own pool (or a task to open one). Everything
after that happens in upstream callbacks. What is bounded, and counted when the bound is hit:
requests in flight per route (`max_concurrency`), the request size (`max_body`), and the bytes kept
of each response (`max_response`). Nothing is queued: a request over a bound is not mirrored.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import deque
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final

from router.analysis.compare import Comparison
from router.analysis.decoding import DecodeError, decode
from router.analysis.instances import compare_instances
from router.analysis.llm import LlmOutcome, TokenMeter, rewrite_model
from router.config import RouteConfig, ShadowConfig
from router.control.ledger import ComparedOutcome, PairOutcome
from router.control.shadowstats import DROP_BODY_TOO_LARGE, DROP_CONCURRENCY, DROP_PACED
from router.dataplane.balancer import BackendGroup
from router.dataplane.proxy import upstream_request
from router.dataplane.request import Header, Request
from router.dataplane.shadowplan import Pacer, ShadowPlan
from router.dataplane.upstream import ResponseSink, UpstreamConnection, UpstreamError, UpstreamPool
from router.observe.judge import Judge
from router.observe.monitor import Finished

if TYPE_CHECKING:
    from router.runtime import Runtime

log = logging.getLogger("router.dataplane.shadow")
SHADOW_HEADER = b"X-Shadow-Request: 1\r\n"
# Final aliases: compiled code reads them from a C static (a module attribute or imported name
# would be a dict lookup on every call).
perf_counter: Final = time.perf_counter
_monotonic: Final = time.monotonic
_draw: Final = random.random
# Comparing large bodies takes milliseconds: those go to a worker thread, off the event loop.
INLINE_COMPARE_BYTES = 64 * 1024
MAX_BACKLOG = 4096  # finished mirrored requests waiting for their turn; beyond, skipped and counted
PREVIEW_BYTES = 2048
# Idle connections each shadow pool keeps ready while its route has live traffic. A copy that has
# to open a connection pays the set-up (handshake, TLS, a backend's slow first response) that the
# busier live pool long since paid; with spares ready, shadow and live latencies compare alike.
WARM_IDLE: Final = 2
WARM_EVERY_S: Final = 0.1  # at most one spare opened per pool this often (a backend may close them at once)


class Capture:
    """One response of a mirrored request: the live one, the shadow's, or the primary's repeat."""

    __slots__ = ("body", "content_type", "done", "encoding", "error", "latency", "size", "started", "status",
                 "truncated")

    def __init__(self, started: float) -> None:
        self.started = started
        self.status = 0
        self.content_type = "application/json"
        self.encoding: str | None = None  # Content-Encoding: decoded for comparison, relayed as sent
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
            elif lname == b"content-encoding":
                self.encoding = value.decode("latin-1")

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


class CaptureSink(ResponseSink):
    """Receives a shadow (or noise) response into a Capture; enforces the shadow's timeout."""

    def __init__(self, pair: MirroredRequest, side: Capture, timeout: float) -> None:
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
            self.pair.pacer.observe(side.latency)
        self.pair.side_done()


class MirroredRequest:
    """A live request and its copies, compared once every side has finished."""

    def __init__(self, rt: Runtime, route: RouteConfig, req: Request, pacer: Pacer, noise: bool) -> None:
        self.rt = rt
        self.route = route
        assert route.shadow is not None
        self.cfg: ShadowConfig = route.shadow
        self.req = req
        self.pacer = pacer
        self.loop = asyncio.get_running_loop()
        now = perf_counter()
        self.live = Capture(req.started)
        self.shadow = Capture(now)
        self.noise = Capture(now) if noise else None
        self.pending = 3 if noise else 2
        self.live_llm: LlmOutcome | None = None  # LLM routes: set by the live Exchange
        self.shadow_meter: TokenMeter | None = None

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

    def side_done(self) -> None:
        self.pending -= 1
        if self.pending == 0:
            self.rt.mirror.finished(self)


class Mirror:
    """Sends the copies and schedules their comparison; counts nothing itself (the ledger does).

    Owns only data-plane state: per-route pacing and in-flight counts, and the comparison backlog.
    The shadow's pools belong to the runtime (`Runtime.shadow_groups`), so a reload swaps them with
    the table."""

    def __init__(self) -> None:
        self._backlog: deque[MirroredRequest] = deque()
        self.pacers: dict[str, Pacer] = {}
        self._plans: dict[str, ShadowPlan] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.judge = Judge()

    def in_flight(self, route: str) -> int:
        pacer = self.pacers.get(route)
        return pacer.in_flight if pacer is not None else 0

    # -- the live path's only call
    def begin(self, rt: Runtime, route: RouteConfig, req: Request, live_backend: str) -> MirroredRequest | None:
        plan = self._plans.get(route.name)
        if plan is None or plan.route is not route or plan.rt is not rt:  # first use, or a reload
            plan = self._plan(rt, route)
        if live_backend != plan.primary or req.method not in plan.methods:
            return None
        ledger = rt.ledger
        if plan.name in ledger.mirror_stopped:  # the rollout ended: the candidate gets no more copies
            return None
        now = perf_counter()
        if now >= plan.warm_at:
            # Every eligible live request keeps the shadow's pool warm, mirrored or not: a backend
            # that closes idle connections must not leave rare copies to open their own. Looked at
            # once per WARM_EVERY_S, the most often `_warm` opens a spare anyway.
            plan.warm_at = now + WARM_EVERY_S
            group = plan.group
            for pool in group.pools:
                if len(pool.idle) < WARM_IDLE:
                    self._warm(group, pool)
        if plan.percent < 100 and _draw() * 100 >= plan.percent:
            return None
        if not plan.mirrors(req.path):
            ledger.not_mirrored(plan.name, "path")  # not an inference call (shadow.paths)
            return None
        if len(req.body) > plan.max_body:
            ledger.mirror_skipped(plan.name, DROP_BODY_TOO_LARGE)
            return None
        pacer = plan.pacer
        if pacer.in_flight >= plan.max_concurrency:
            ledger.mirror_skipped(plan.name, DROP_CONCURRENCY)
            return None
        if now < pacer.next_send:
            ledger.mirror_skipped(plan.name, DROP_PACED)
            return None
        pacer.next_send = now + pacer.latency_ewma / plan.max_concurrency
        pacer.in_flight += 1
        ledger.mirrored(plan.name)
        noise = plan.noise_percent > 0 and _draw() * 100 < plan.noise_percent
        pair = MirroredRequest(rt, route, req, pacer, noise)
        if plan.llm:
            pair.shadow_meter = TokenMeter(keep_text=plan.judged)
            pair.shadow_meter.start(perf_counter())
        self._send(plan.group, req, rt.via, CaptureSink(pair, pair.shadow, plan.timeout))
        if pair.noise is not None:
            self._send(rt.shadow_groups[plan.primary], req, rt.via, CaptureSink(pair, pair.noise, plan.timeout))
        return pair

    def _plan(self, rt: Runtime, route: RouteConfig) -> ShadowPlan:
        """A new plan for this route and runtime; after a reload, every plan of an older runtime
        goes (a removed route's must not keep the old runtime alive)."""
        if any(p.rt is not rt for p in self._plans.values()):
            self._plans.clear()
        plan = self._plans[route.name] = ShadowPlan(rt, route, self._pacer(route.name))
        return plan

    def _pacer(self, route: str) -> Pacer:
        """The route's pacer: it outlives reloads, so that a reload neither resets the shadow's
        learnt latency nor forgets the copies in flight."""
        pacer = self.pacers.get(route)
        if pacer is None:
            pacer = self.pacers[route] = Pacer()
        return pacer

    def _send(self, group: BackendGroup, req: Request, via: bytes, sink: CaptureSink) -> None:
        pool = group.pick(_monotonic(), panic=True)
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

    def _warm(self, group: BackendGroup, pool: UpstreamPool) -> None:
        now = perf_counter()
        if now - pool.warmed_at < WARM_EVERY_S or pool.closing \
                or pool.open >= pool.spec.max_connections:
            return
        pool.warmed_at = now
        if not group.states[group.pools.index(pool)].available(_monotonic()):
            return  # ejected or failing its health checks: no spares for an endpoint out of rotation
        task = asyncio.get_running_loop().create_task(self._open_spare(pool))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @staticmethod
    async def _open_spare(pool: UpstreamPool) -> None:
        """Open one connection and keep it idle, behind the ones that have carried requests.

        Copies take the newest idle connection first; a spare goes to the other end, so copies
        prefer connections already proven, and a spare is used once it has had time to settle. A
        failure is quiet: a backend that is down is the health checks' business, and the copies
        report their own errors."""
        with contextlib.suppress(UpstreamError):
            conn = await pool._connect()  # a new connection, never an idle one handed back
            pool.release(conn)  # to a copy waiting for one, else idle (or closed if the pool is)
            idle = pool.idle
            if idle and idle[-1] is conn:
                idle.insert(0, idle.pop())

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
        pair.pacer.in_flight = max(0, pair.pacer.in_flight - 1)
        if len(self._backlog) >= MAX_BACKLOG:
            pair.rt.ledger.compare_skipped(pair.route.name, "compare_backlog")
            return
        self._backlog.append(pair)
        if len(self._backlog) == 1:
            asyncio.get_running_loop().call_soon(self._next)

    def _next(self) -> None:
        self._account(self._backlog.popleft())
        if self._backlog:
            asyncio.get_running_loop().call_soon(self._next)

    def _account(self, pair: MirroredRequest) -> None:
        live, shadow = pair.live, pair.shadow
        rt = pair.rt
        if rt.monitor is not None:
            rt.monitor.joined(_joined_record(pair))
        truncated = live.truncated or shadow.truncated
        rt.ledger.pair(PairOutcome(pair.route.name, pair.cfg.backend, live.status, live.error, live.latency,
                                   shadow.status, shadow.error, shadow.latency, truncated))
        if pair.shadow_meter is not None and live.ok and shadow.ok:
            self._account_llm(pair, pair.shadow_meter.outcome(shadow.started + shadow.latency))
        if not (live.ok and shadow.ok) or truncated:
            return
        noise = pair.noise if pair.noise is not None and pair.noise.ok and not pair.noise.truncated else None
        job = _CompareJob(pair, noise)
        # A compressed body may decode to many times its size: decoding goes off the loop too.
        if live.size + shadow.size <= INLINE_COMPARE_BYTES and not (live.encoding or shadow.encoding):
            job.record(job.run())
        else:
            future = asyncio.get_running_loop().run_in_executor(None, job.run)
            future.add_done_callback(lambda f: job.record(f.result()) if not f.cancelled() else None)


    def _account_llm(self, pair: MirroredRequest, shadow: LlmOutcome) -> None:
        """Paired LLM figures (same request on both sides), the step window's, and the judge."""
        live, route, judge, backend = pair.live_llm, pair.route.name, pair.cfg.judge, pair.cfg.backend
        if live is None:
            return
        ledger = pair.rt.ledger
        if pair.live.error != "incomplete":
            ledger.llm_pair(route, backend, live, shadow)
        if judge is not None and live.text and shadow.text:
            self.judge.submit(route, judge, pair.req.body, live.text, shadow.text,
                              lambda result: ledger.judged(route, backend, result))

class _CompareJob:
    """The comparison of one mirrored request: pure `run`, then `record` on the event loop."""

    def __init__(self, pair: MirroredRequest, noise: Capture | None) -> None:
        self.pair = pair
        self.noise = noise
        self.bodies: tuple[bytes, bytes] | None = None  # decoded, for the diff preview of a disagreement

    def run(self) -> tuple[Comparison, Comparison | None]:
        p = self.pair
        spec, cap = p.cfg.compare, p.cfg.max_response
        live = p.live.text()
        main = compare_instances(live, p.shadow.text(), spec, p.live.content_type, p.shadow.content_type,
                                 live_encoding=p.live.encoding, shadow_encoding=p.shadow.encoding, max_decoded=cap)
        repeat = None
        if self.noise is not None:
            repeat = compare_instances(live, self.noise.text(), spec, p.live.content_type, self.noise.content_type,
                                       live_encoding=p.live.encoding, shadow_encoding=self.noise.encoding,
                                       max_decoded=cap)
        if main.error is None and not main.agree:
            self.bodies = (_readable(p.live, cap), _readable(p.shadow, cap))
        return main, repeat

    def record(self, result: tuple[Comparison, Comparison | None]) -> None:
        main, repeat = result
        p = self.pair
        diff = _diff_entry(p, main.fields, self.bodies) if main.error is None and not main.agree else None
        outcome = ComparedOutcome(p.route.name, p.cfg.backend, main, repeat, diff, p.cfg.compare.agree == "labels")
        if p.rt.ledger.compared(outcome):
            log.warning("route %s: shadow pair not compared (%s): %s", p.route.name, main.error_reason, main.error)


def _joined_record(p: MirroredRequest) -> Finished:
    """The prediction log's record of a mirrored request: both outputs side by side."""
    live, shadow = p.live, p.shadow
    return Finished(p.req.own_id.decode("latin-1"), time.time(), p.route.name, p.route.primary, live.status,
                    live.latency, p.req.body, live.text() if not live.truncated else None, True,
                    shadow={"backend": p.cfg.backend, "status": shadow.status, "latency_s": shadow.latency,
                            "error": shadow.error, "response_body": shadow.text() if not shadow.truncated else None,
                            "encoding": shadow.encoding},
                    client_request_id=p.req.request_id.decode("latin-1") if p.req.request_id != p.req.own_id else None,
                    encoding=live.encoding)


def _readable(side: Capture, cap: int) -> bytes:
    """The body as a person reads it: decoded when it was compressed (it decoded once already)."""
    try:
        return decode(side.text(), side.encoding, cap)
    except DecodeError:
        return side.text()


def _diff_entry(p: MirroredRequest, fields: Mapping[str, bool],
                bodies: tuple[bytes, bytes] | None = None) -> dict[str, Any]:
    live, shadow = bodies or (p.live.text(), p.shadow.text())
    return {
        "time": time.time(),
        "request_id": p.req.request_id.decode("latin-1"),
        "method": p.req.method.decode("latin-1"),
        "path": p.req.path,
        "fields": sorted(name for name, ok in fields.items() if not ok),
        "live": _preview(live),
        "shadow": _preview(shadow),
    }


def _preview(body: bytes) -> str:
    text = body[:PREVIEW_BYTES].decode("utf-8", "replace")
    return text + ("..." if len(body) > PREVIEW_BYTES else "")

