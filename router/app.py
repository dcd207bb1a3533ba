"""Wiring and lifecycle: start the listeners, reload on SIGHUP, drain on SIGTERM.

Signal handlers only put the signal's name on a queue; the control task does the work on the
event loop (uvicorn's `handle_hup` habit). Reload is all-or-nothing: parse and validate the whole
file in a worker thread, build the new runtime, then swap it in one assignment.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
from pathlib import Path

from aiohttp import web

from router.balancer import HealthRegistry
from router.config import Config, ConfigError, load_config
from router.healthcheck import HealthChecker
from router.monitor import AlertNotifier, Monitor
from router.rollout import RolloutController
from router.runtime import Runtime, Splits, Stats, build_runtime
from router.server import DataServer
from router.shadow import Mirror
from router.state import StateStore

log = logging.getLogger("router")


class Router:
    """One router process: the data listener, the admin listener and the runtime state."""

    def __init__(self, config: Config, config_path: str | Path) -> None:
        self.config_path = str(config_path)
        self.state_store = StateStore(config.state_dir)
        self.splits = Splits(self.state_store)
        self.splits.reconcile(config)
        self.stats = Stats()
        self.mirror = Mirror()
        self.rollouts = RolloutController(config.state_dir, self.splits)
        self.runtime: Runtime
        self.health = HealthRegistry()
        self.monitor = Monitor(config)
        self.monitor.on_scored = self.rollouts.scored
        self.alert_notifier = AlertNotifier(lambda: self.runtime)
        self.monitor.notify = self.alert_notifier
        self.runtime, _ = build_runtime(config, self.splits, self.stats, self.mirror, self.rollouts, self.health,
                                        self.monitor)
        self._rollout_task: asyncio.Task[None] | None = None
        self._health_task: asyncio.Task[None] | None = None
        self.data = DataServer(lambda: self.runtime)
        self.admin_runner: web.AppRunner | None = None
        self.reloads_ok = 0
        self.reloads_failed = 0
        self.last_reload_ok = True
        self.last_reload_error: str | None = None
        self.operator_lock = asyncio.Lock()
        self.signals: asyncio.Queue[str] = asyncio.Queue()
        self.stopped = asyncio.Event()

    @property
    def config(self) -> Config:
        return self.runtime.config

    async def start(self) -> None:
        from router.admin import build_admin_app  # admin imports this module

        cfg = self.config
        await self.data.start(cfg.listen.host, cfg.listen.port)
        self.admin_runner = web.AppRunner(build_admin_app(self), access_log=None, handle_signals=False)
        await self.admin_runner.setup()
        site = web.TCPSite(self.admin_runner, cfg.admin.listen.host, cfg.admin.listen.port,
                           reuse_address=True)
        await site.start()
        loop = asyncio.get_running_loop()
        self._rollout_task = loop.create_task(self.rollouts.run())
        self._health_task = loop.create_task(HealthChecker(lambda: self.runtime).run())
        self.monitor.start()

    async def reload(self) -> tuple[bool, str]:
        """Re-read the YAML and swap the table; on any error keep the old one and say why."""
        try:
            config = await asyncio.to_thread(load_config, self.config_path)
        except ConfigError as exc:
            return self._reload_failed(str(exc))
        old = self.runtime
        notes = []
        for what, new, before in (("listen", config.listen, old.config.listen),
                                  ("admin.listen", config.admin.listen, old.config.admin.listen),
                                  ("state_dir", config.state_dir, old.config.state_dir)):
            if new != before:
                notes.append(f"{what} changed ({before} -> {new}): takes effect at the next restart")
        stale = self.splits.reconcile(config)
        if stale:
            notes.append(f"runtime splits reset to the YAML for changed routes: {', '.join(stale)}")
        if config.monitoring != old.config.monitoring:
            notes.append("monitoring settings changed: they take effect at the next restart")
        self.runtime, removed = build_runtime(config, self.splits, self.stats, self.mirror, self.rollouts,
                                              self.health, self.monitor, old)
        for pool in removed:
            pool.close()  # idle connections now; busy ones as their responses end
        self.reloads_ok += 1
        self.last_reload_ok = True
        self.last_reload_error = None
        message = f"reloaded {self.config_path}: {len(config.routes)} routes, {len(config.backends)} backends"
        for note in notes:
            log.warning("%s", note)
        log.info("%s", message)
        return True, "; ".join([message, *notes])

    def _reload_failed(self, error: str) -> tuple[bool, str]:
        self.reloads_failed += 1
        self.last_reload_ok = False
        self.last_reload_error = error
        log.error("reload failed, still serving the previous config:\n%s", error)
        return False, error

    def install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.signals.put_nowait, sig.name)

    async def run_until_stopped(self) -> None:
        """Dispatch signals until SIGTERM or SIGINT, then shut down in order."""
        while True:
            name = await self.signals.get()
            if name == "SIGHUP":
                async with self.operator_lock:
                    await self.reload()
            else:
                log.info("%s: draining", name)
                break
        await self.shutdown()

    async def shutdown(self) -> None:
        """Stop accepting, let requests in flight finish (up to drain_timeout), close everything."""
        clean = await self.data.drain(self.config.limits.drain_timeout)
        if not clean:
            log.warning("drain_timeout reached: closed connections with requests still in flight")
        for task in (self._rollout_task, self._health_task):
            if task is not None:
                task.cancel()
        await self.rollouts.close()
        await self.mirror.judge.close()  # judge calls still running: their verdicts no longer matter
        await self.monitor.close()
        await self.alert_notifier.close()
        for pool in [*(p for g in self.runtime.groups.values() for p in g.pools), *self.mirror.pools]:
            pool.close()
        if self.admin_runner is not None:
            await self.admin_runner.cleanup()
        self.stopped.set()


MIN_AIOHTTP = (3, 14, 5)


def check_parsers() -> str | None:
    """Refuse to run on pure-Python HTTP parsers or an old aiohttp: most request-smuggling bugs
    in aiohttp were in its pure-Python parser, and fixed by 3.14.5."""
    import aiohttp
    from aiohttp import http_parser

    version = tuple(int(p) for p in aiohttp.__version__.split(".")[:3] if p.isdigit())
    if version < MIN_AIOHTTP:
        return f"aiohttp {aiohttp.__version__} is too old; the router needs {'.'.join(map(str, MIN_AIOHTTP))} or newer"
    if http_parser.HttpRequestParser is not getattr(http_parser, "HttpRequestParserC", None):
        return ("aiohttp's C HTTP parser is not in use (is AIOHTTP_NO_EXTENSIONS set?); "
                "the router refuses to run on the pure-Python parser")
    return None


async def serve(config: Config, config_path: str, *, ready_message: bool = True) -> None:
    # Objects alive at start (modules, config, tables) never become garbage: keep them out of the
    # collector's full passes, which would otherwise rescan them all (a full pass over them took
    # ~16 ms here) while requests wait.
    gc.collect()
    gc.freeze()
    router = Router(config, config_path)
    for problem in (router.state_store.problem, router.rollouts.problem, router.monitor.problem):
        if problem:
            log.error("%s", problem)
    await router.start()
    router.install_signal_handlers()
    if ready_message:
        print(f"model-router listening on http://{config.listen} (admin http://{config.admin.listen}), "
              f"{len(config.routes)} routes", flush=True)
    await router.run_until_stopped()
