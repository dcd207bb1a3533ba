"""`workers: N`: N worker processes share the data port; this process supervises them.

The supervisor serves no data itself. It starts the workers (each a full router whose data
listener uses SO_REUSEPORT, so the kernel spreads connections over them, and whose admin API sits
on a private unix socket), restarts one that dies, forwards SIGHUP to all of them (each re-reads
and validates the file: a broken one changes none) and SIGTERM (each drains). Its own admin
listener is the one address of the host: `/metrics` merges the workers' metrics with a `worker`
label, `/-/healthz` asks every worker, `POST /-/reload` reloads every worker, `/-/workers` lists
them, and every other admin call is passed to a live worker (in a cluster they share all state).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from router.config import Config, ConfigError, load_config
from router.workers.aggregate import merge

log = logging.getLogger("router.workers")

READY_TIMEOUT_S = 30.0
FORWARD_TIMEOUT_S = 10.0
HOP_HEADERS = frozenset({"connection", "keep-alive", "transfer-encoding", "content-length", "host"})


@dataclass
class Worker:
    index: int
    socket: str
    proc: asyncio.subprocess.Process | None = None
    restarts: int = 0
    started_at: float = 0.0
    exits: list[int] = field(default_factory=list)

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    async def call(self, method: str, path: str, **kw: Any) -> tuple[int, dict[str, str], bytes]:
        timeout = aiohttp.ClientTimeout(total=FORWARD_TIMEOUT_S)
        async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(self.socket), timeout=timeout) as s, \
                s.request(method, "http://localhost" + path, **kw) as r:  # a Host the admin guard accepts
            return r.status, dict(r.headers), await r.read()


class Supervisor:
    """Starts, watches, signals and aggregates the worker processes of one host."""

    def __init__(self, config: Config, config_path: str) -> None:
        self.config = config
        self.config_path = config_path
        self.dir = Path(tempfile.mkdtemp(prefix="mr-"))  # short: unix socket paths are limited to ~100 bytes
        self.workers = [Worker(i, str(self.dir / f"w{i}.sock")) for i in range(config.workers)]
        self.stopping = False
        self.signals: asyncio.Queue[str] = asyncio.Queue()
        self.watchers: list[asyncio.Task[None]] = []
        self.reloads = {"signalled": 0, "refused": 0}  # SIGHUPs passed on, and refused for a broken file

    async def spawn(self, w: Worker) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(w.socket)
        level = logging.getLevelName(logging.getLogger().level).lower()
        w.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "router.workers.worker", "--config", self.config_path, "--index", str(w.index),
            "--admin-socket", w.socket, "--parent", str(os.getpid()), "--log-level", level)
        w.started_at = time.time()

    async def ready(self, w: Worker) -> None:
        """Wait for the worker's admin socket to answer; RuntimeError if it exits first."""
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            assert w.proc is not None
            if w.proc.returncode is not None:
                raise RuntimeError(f"worker {w.index} exited with {w.proc.returncode} while starting")
            with contextlib.suppress(aiohttp.ClientError, OSError, asyncio.TimeoutError):
                if (await w.call("GET", "/-/healthz"))[0] == 200:
                    return
            await asyncio.sleep(0.05)
        raise RuntimeError(f"worker {w.index} did not become ready within {READY_TIMEOUT_S:g}s")

    async def watch(self, w: Worker) -> None:
        """Restart the worker whenever it exits, unless the host is stopping (backoff up to 10 s)."""
        backoff = 0.5
        while True:
            assert w.proc is not None
            code = await w.proc.wait()
            w.exits.append(code)
            if self.stopping:
                return
            log.error("worker %d (pid %d) exited with %d: restarting", w.index, w.proc.pid, code)
            await asyncio.sleep(backoff if time.time() - w.started_at < 10 else 0.0)
            backoff = min(backoff * 2, 10.0)
            w.restarts += 1
            await self.spawn(w)

    def signal_all(self, sig: int) -> None:
        for w in self.workers:
            if w.alive and w.proc is not None:
                with contextlib.suppress(ProcessLookupError):
                    w.proc.send_signal(sig)

    async def stop(self) -> None:
        """SIGTERM to every worker (each drains), then wait; a worker still there after the drain is killed."""
        self.stopping = True
        self.signal_all(signal.SIGTERM)
        limit = self.config.limits.drain_timeout + 10
        for w in self.workers:
            if w.proc is not None:
                try:
                    await asyncio.wait_for(w.proc.wait(), limit)
                except TimeoutError:
                    w.proc.kill()
                    await w.proc.wait()
        for task in self.watchers:
            task.cancel()
        await asyncio.gather(*self.watchers, return_exceptions=True)
        shutil.rmtree(self.dir, ignore_errors=True)

    def live(self) -> list[Worker]:
        return [w for w in self.workers if w.alive]


class WorkersCollector(Collector):
    """The workers' metrics (labelled by worker) and the supervisor's own."""

    def __init__(self, sup: Supervisor) -> None:
        self.sup = sup
        self.texts: list[tuple[int, str]] = []

    def collect(self) -> list[Metric]:
        out = list(merge(self.texts))
        out.append(GaugeMetricFamily("router_workers_running", "Worker processes running on this host.",
                                     value=len(self.sup.live())))
        restarts = CounterMetricFamily("router_worker_restarts", "Worker processes restarted after they died.",
                                       labels=["worker"])
        for w in self.sup.workers:
            restarts.add_metric([str(w.index)], w.restarts)
        out.append(restarts)
        return out


SUP = web.AppKey("supervisor", Supervisor)
COLLECTOR = web.AppKey("collector", WorkersCollector)


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": {"status": status, "message": message}}, status=status)


async def metrics(request: web.Request) -> web.Response:
    sup, collector = request.app[SUP], request.app[COLLECTOR]
    texts = []
    for w in sup.live():
        with contextlib.suppress(aiohttp.ClientError, OSError, asyncio.TimeoutError):
            status, _, body = await w.call("GET", "/metrics")
            if status == 200:
                texts.append((w.index, body.decode()))
    collector.texts = texts
    registry = CollectorRegistry()
    registry.register(collector)
    return web.Response(body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST})


async def healthz(request: web.Request) -> web.Response:
    sup = request.app[SUP]
    states = {}
    for w in sup.workers:
        code = 0
        if w.alive:
            with contextlib.suppress(aiohttp.ClientError, OSError, asyncio.TimeoutError):
                code = (await w.call("GET", "/-/healthz"))[0]
        states[str(w.index)] = code
    ok = not sup.stopping and any(c == 200 for c in states.values())
    return web.json_response({"status": "ok" if ok else "unavailable", "workers": states}, status=200 if ok else 503)


async def workers(request: web.Request) -> web.Response:
    sup = request.app[SUP]
    return web.json_response({"reloads": sup.reloads, "workers": [
        {"index": w.index, "pid": w.proc.pid if w.proc else None, "alive": w.alive, "restarts": w.restarts,
         "started_at": w.started_at, "exit_codes": w.exits[-10:]} for w in sup.workers]})


def _forwarded(request: web.Request) -> dict[str, str]:
    return {k: v for k, v in request.headers.items() if k.lower() not in HOP_HEADERS}


async def reload(request: web.Request) -> web.Response:
    """Every worker re-reads the file; 200 only if all of them applied it."""
    sup, body = request.app[SUP], await request.read()
    results: list[dict[str, Any]] = []
    statuses: list[int] = []
    for w in sup.live():
        try:
            status, _, answer = await w.call("POST", "/-/reload", data=body, headers=_forwarded(request))
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            status, answer = 502, f'{{"ok": false, "message": "worker unreachable: {type(exc).__name__}"}}'.encode()
        results.append({"worker": w.index, "status": status, "answer": answer.decode(errors="replace")})
        statuses.append(status)
    if not statuses:
        return _error(503, "no worker is running")
    worst = max(statuses)
    return web.json_response({"ok": worst == 200, "workers": results}, status=worst)


async def forward(request: web.Request) -> web.StreamResponse:
    """Any other admin call: to the first live worker (the workers apply the same state)."""
    live = request.app[SUP].live()
    if not live:
        return _error(503, "no worker is running")
    try:
        status, headers, body = await live[0].call(request.method, request.path_qs, data=await request.read(),
                                                    headers=_forwarded(request))
    except (TimeoutError, aiohttp.ClientError, OSError) as exc:
        return _error(502, f"worker {live[0].index} did not answer: {type(exc).__name__}")
    return web.Response(status=status, body=body,
                        headers={k: v for k, v in headers.items() if k.lower() not in HOP_HEADERS})


def build_app(sup: Supervisor) -> web.Application:
    app = web.Application(client_max_size=1024 * 1024)
    app[SUP] = sup
    app[COLLECTOR] = WorkersCollector(sup)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/-/healthz", healthz)
    app.router.add_get("/-/workers", workers)
    app.router.add_post("/-/reload", reload)
    app.router.add_route("*", "/{tail:.*}", forward)
    return app


async def supervise(config: Config, config_path: str, *, ready_message: bool = True) -> None:
    sup = Supervisor(config, config_path)
    loop = asyncio.get_running_loop()
    runner = web.AppRunner(build_app(sup), access_log=None, handle_signals=False)
    await runner.setup()
    try:
        for w in sup.workers:
            await sup.spawn(w)
        await asyncio.gather(*(sup.ready(w) for w in sup.workers))
        await web.TCPSite(runner, config.admin.listen.host, config.admin.listen.port, reuse_address=True).start()
        sup.watchers = [loop.create_task(sup.watch(w)) for w in sup.workers]
        for sig in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, sup.signals.put_nowait, sig.name)
        if ready_message:
            print(f"model-router listening on http://{config.listen} with {config.workers} workers "
                  f"(admin http://{config.admin.listen}), {len(config.routes)} routes", flush=True)
        while (name := await sup.signals.get()) == "SIGHUP":
            try:  # checked here first, so that a broken file reaches no worker at all
                await asyncio.to_thread(load_config, config_path)
            except ConfigError as exc:
                log.error("SIGHUP: %s is invalid, no worker reloads:\n%s", config_path, exc)
                sup.reloads["refused"] += 1
                continue
            log.info("SIGHUP: reloading every worker")
            sup.reloads["signalled"] += 1
            sup.signal_all(signal.SIGHUP)
        log.info("%s: draining every worker", name)
    except RuntimeError as exc:
        raise SystemExit(f"model-router: {exc}") from None
    finally:
        await sup.stop()
        await runner.cleanup()
