"""Wiring and lifecycle: start the listeners, reload on SIGHUP, drain on SIGTERM.

Signal handlers only put the signal's name on a queue; the control task does the work on the
event loop (uvicorn's `handle_hup` habit). Reload is all-or-nothing: parse and validate the whole
file in a worker thread, build the new runtime, then swap it in one assignment.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import logging
import signal
from collections.abc import AsyncIterator, Coroutine
from pathlib import Path
from typing import Any

from aiohttp import web

from router.admin.api import build_admin_app
from router.cluster.node import Member, MemoryStateStore
from router.cluster.shared_ledger import SharedLedger
from router.cluster.store import Store
from router.config import Config, ConfigError, load_config
from router.control.ledger import Ledger
from router.control.rollout import RolloutController
from router.control.splits import Splits
from router.control.state import StateStore
from router.dataplane import openfiles
from router.dataplane.balancer import HealthRegistry
from router.dataplane.healthcheck import HealthChecker
from router.dataplane.server import DataServer
from router.dataplane.shadow import Mirror
from router.observe.feedback import FeedbackStoreError
from router.observe.monitor import AlertNotifier, Monitor
from router.runtime import compile_runtime

log = logging.getLogger("router")


class Router:
    """One router process: the data listener, the admin listener and the owners of state.

    The ledger owns per-route counters and splits; the rollout controller owns phases; the
    runtime (table and pools) is compiled from the YAML and swapped whole on reload.
    """

    def __init__(self, config: Config, config_path: str | Path, worker: WorkerSlot | None = None) -> None:
        self.config_path = str(config_path)
        self.worker = worker  # one of `workers` processes: admin on a unix socket, the port shared
        self.cluster: Member | None = None
        if config.cluster is None:
            self.state_store = StateStore(config.state_dir)
            self.ledger = Ledger(Splits(self.state_store))
            self.rollouts = RolloutController(config.state_dir, self.ledger)
        else:
            # One of several processes acting as one router: state and decisions live in Redis.
            self.state_store = MemoryStateStore(config.cluster.name)
            self.ledger = SharedLedger(Splits(self.state_store))
            self.rollouts = RolloutController(config.state_dir, self.ledger, MemoryStateStore(config.cluster.name))
        self.ledger.reconcile(config)
        self.mirror = Mirror()
        self.rollouts.configure(config)
        if config.cluster is not None:
            assert isinstance(self.ledger, SharedLedger)
            store = Store(config.cluster, config.cluster.url())
            where = str(config.admin.listen) if worker is None else f"{config.admin.listen}/worker-{worker.index}"
            self.cluster = Member(config, store, self.ledger, self.rollouts, where)
        self.health = HealthRegistry()
        self.monitor = Monitor(config)
        self.monitor.configure(config)
        self.monitor.on_scored = self.ledger.scored
        if self.cluster is not None and self.monitor.store is not None:
            self.monitor.on_remembered = self.cluster.predictions.remembered
            self.monitor.lookup = self.cluster.predictions.lookup
        self.alert_notifier = AlertNotifier(lambda: self.runtime)
        self.monitor.notify = self.alert_notifier
        self.runtime, _ = compile_runtime(config, self.ledger, self.mirror, self.health, self.monitor)
        self.data = DataServer(lambda: self.runtime)
        self.reloads_ok = 0
        self.reloads_failed = 0
        self.last_reload_ok = True
        self.last_reload_error: str | None = None
        self.operator_lock = asyncio.Lock()
        self.signals: asyncio.Queue[str] = asyncio.Queue()
        self.stopped = asyncio.Event()
        self._stack = contextlib.AsyncExitStack()

    @property
    def config(self) -> Config:
        return self.runtime.config

    async def start(self) -> None:
        """Enter every resource in order; `shutdown` leaves them in reverse (data drains first)."""
        stack = self._stack
        await stack.enter_async_context(self._admin_listener())
        stack.push_async_callback(self._close_pools)
        await stack.enter_async_context(self._monitoring())
        await stack.enter_async_context(background(HealthChecker(lambda: self.runtime).run(), "health checks"))
        await stack.enter_async_context(self._rollout_loop())
        stack.push_async_callback(self.mirror.judge.close)  # judge calls still running: their verdicts no longer matter
        await stack.enter_async_context(self._data_listener())

    @contextlib.asynccontextmanager
    async def _admin_listener(self) -> AsyncIterator[None]:
        cfg = self.config
        runner = web.AppRunner(build_admin_app(self), access_log=None, handle_signals=False)
        await runner.setup()
        try:
            if self.worker is not None:  # the supervisor's admin listener is the one operators reach
                await web.UnixSite(runner, self.worker.admin_socket).start()
            else:
                await web.TCPSite(runner, cfg.admin.listen.host, cfg.admin.listen.port, reuse_address=True).start()
            yield
        finally:
            await runner.cleanup()

    @contextlib.asynccontextmanager
    async def _data_listener(self) -> AsyncIterator[None]:
        cfg = self.config
        await self.data.start(cfg.listen.host, cfg.listen.port, reuse_port=self.worker is not None)
        try:
            yield
        finally:
            if not await self.data.drain(self.config.limits.drain_timeout):
                log.warning("drain_timeout reached: closed connections with requests still in flight")

    @contextlib.asynccontextmanager
    async def _monitoring(self) -> AsyncIterator[None]:
        self.monitor.start()
        try:
            yield
        finally:
            await self.monitor.close()
            await self.alert_notifier.close()

    @contextlib.asynccontextmanager
    async def _rollout_loop(self) -> AsyncIterator[None]:
        if self.cluster is not None:
            # In a cluster only the leader decides: the member's loop runs the controller's tick.
            async with background(self.cluster.run(), "cluster member"):
                yield
            await self.cluster.close()
            await self.rollouts.webhook.close()
            return
        async with background(self.rollouts.run(), "rollout loop"):
            yield
        await self.rollouts.close()

    async def _close_pools(self) -> None:
        for pool in self.runtime.pools:
            pool.close()

    async def reload(self) -> tuple[bool, str]:
        """Re-read the YAML and swap the runtime; on any error nothing at all has changed."""
        try:
            config = await asyncio.to_thread(load_config, self.config_path)
            new, removed = compile_runtime(config, self.ledger, self.mirror, self.health, self.monitor, self.runtime)
        except ConfigError as exc:
            return self._reload_failed(str(exc))
        except Exception as exc:  # a reload must never take the router down
            log.exception("reload: compiling %s failed", self.config_path)
            return self._reload_failed(f"{self.config_path}: {type(exc).__name__}: {exc}")
        old = self.runtime
        notes = restart_notes(old.config, config)
        # Commit: reconcile the state owners with the new config, then swap in one assignment.
        notes += self.ledger.reconcile(config)
        self.rollouts.configure(config)
        if self.cluster is not None:
            self.cluster.reconfigure(config)
        self.health.prune(config)
        self.monitor.configure(config)
        self.runtime = new
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
        """Stop accepting, let requests in flight finish (up to drain_timeout), then stop the rest."""
        await self._stack.aclose()
        self.stopped.set()


def restart_notes(old: Config, new: Config) -> list[str]:
    """Settings a reload cannot apply to a running process: each named, with its old and new value."""
    notes = [f"{what} changed ({before} -> {after}): takes effect at the next restart"
             for what, before, after in (("listen", old.listen, new.listen),
                                         ("admin.listen", old.admin.listen, new.admin.listen),
                                         ("state_dir", old.state_dir, new.state_dir),
                                         ("cluster", old.cluster, new.cluster),
                                         ("workers", old.workers, new.workers)) if before != after]
    changed = [f"monitoring.{f.name}" for f in dataclasses.fields(new.monitoring)
               if getattr(old.monitoring, f.name) != getattr(new.monitoring, f.name)]
    if changed:
        notes.append(f"monitoring settings changed ({', '.join(changed)}): they take effect at the next restart")
    return notes


@contextlib.asynccontextmanager
async def background(job: Coroutine[Any, Any, None], what: str) -> AsyncIterator[asyncio.Task[None]]:
    """Run `job` as a task for the duration of the block; on exit cancel it and wait for it to end."""
    task = asyncio.get_running_loop().create_task(job, name=what)
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        if not task.cancelled() and task.exception() is not None:
            log.error("%s ended with an error: %r", what, task.exception())


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


@dataclasses.dataclass(frozen=True, slots=True)
class WorkerSlot:
    """Where one of several worker processes of a host stands: its index and private admin socket."""

    index: int
    admin_socket: str


async def serve(config: Config, config_path: str, *, ready_message: bool = True,
                worker: WorkerSlot | None = None) -> None:
    # Objects alive at start (modules, config, tables) never become garbage: keep them out of the
    # collector's full passes, which would otherwise rescan them all (a full pass over them took
    # ~16 ms here) while requests wait.
    gc.collect()
    gc.freeze()
    if config.cluster is not None:
        try:
            config.cluster.url()
        except ValueError as exc:
            raise SystemExit(f"model-router: {config.source}: {exc}") from None
    if config.workers > 1 and worker is None:
        from router.workers.supervisor import supervise  # the processes that serve are its children

        await supervise(config, config_path, ready_message=ready_message)
        return
    too_few_files = openfiles.check(config)
    if too_few_files:
        log.warning("%s", too_few_files)
    try:
        router = Router(config, config_path, worker)
    except FeedbackStoreError as exc:
        # The CLI reports OSError as "cannot start: ..." and exits 1, without a traceback.
        raise OSError(f"{exc} (state_dir {config.state_dir} must be writable with monitoring.feedback on)") from None
    for problem in (router.state_store.problem, router.rollouts.problem, router.monitor.problem):
        if problem:
            log.error("%s", problem)
    await router.start()
    router.install_signal_handlers()
    if ready_message:
        print(f"model-router listening on http://{config.listen} (admin http://{config.admin.listen}), "
              f"{len(config.routes)} routes", flush=True)
    await router.run_until_stopped()
