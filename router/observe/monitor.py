"""Model monitoring on the data path: prediction log, feedback loop and anomaly alerts, wired.

The request path only records what it already has (route, backend, status, latency) and, when a
component needs it, the response bytes it relayed (capped). Everything else happens off the
request path: a background task parses responses for the predicted label or score, feeds the
anomaly detector, remembers predictions for feedback (SQLite, on the store's own thread), and
writes the prediction log (on the log's thread). The queue between them is bounded in items and
in bytes (it holds captured bodies: 20,000 items of 128 KiB would be 2.5 GiB while a slow
feedback store holds the drain up); what does not fit is dropped and counted, never waited for.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Final, NamedTuple

from router.analysis.compare import MAX_DECODED
from router.analysis.decoding import DecodeError, decode
from router.analysis.predictions import Read, read_prediction
from router.config import Config, MonitoringConfig
from router.observe.alerts import Alert, AnomalyDetector
from router.observe.feedback import FeedbackResult, FeedbackStore, FeedbackStoreError, Prediction, ShadowPrediction
from router.observe.predlog import PredictionLog, record
from router.observe.webhook import Webhook

if TYPE_CHECKING:
    from router.runtime import Runtime

log = logging.getLogger("router.observe.monitor")
QUEUE_LIMIT = 20_000
QUEUE_BYTES = 32 * 1024 * 1024  # captured bodies held between the request path and the background
BATCH_BYTES = 4 * 1024 * 1024  # taken per background turn, so one turn's parsing stays short
ITEM_OVERHEAD = 256  # the record's own objects, roughly
# Final aliases: compiled code reads them from a C static (a module attribute or imported name
# would be a dict lookup on every call).
_monotonic: Final = time.monotonic
_time: Final = time.time
DRIFT_SAMPLES_PER_S: Final = 100


class Finished(NamedTuple):
    """One finished live request, as the monitor keeps it until the background turn."""

    request_id: str
    time: float
    route: str
    backend: str
    status: int
    latency: float
    request_body: bytes | None
    response_body: bytes | None
    log: bool
    shadow: dict[str, Any] | None = None
    client_request_id: str | None = None  # the client's X-Request-Id; `request_id` is the router's
    encoding: str | None = None  # the response's Content-Encoding

    @property
    def size(self) -> int:
        """Bytes this record holds, as counted against QUEUE_BYTES."""
        shadow = 0 if self.shadow is None else sum(len(v) for v in self.shadow.values() if isinstance(v, bytes | str))
        return ITEM_OVERHEAD + len(self.request_body or b"") + len(self.response_body or b"") + shadow


class Monitor:
    """Owns the detector, the feedback store and the prediction log; survives reloads."""

    def __init__(self, config: Config) -> None:
        self.config: MonitoringConfig = config.monitoring
        self.state_dir = config.state_dir
        self.detector = AnomalyDetector(self.config.alerts) if self.config.alerts else None
        self.log = PredictionLog(self.config.prediction_log) if self.config.prediction_log else None
        self.store: FeedbackStore | None = None
        self.problem: str | None = None
        self.queue: deque[Finished] = deque()
        self.queued_bytes = 0
        self.dropped = 0
        self.feedback_counts: dict[str, int] = {"accepted": 0, "unscorable": 0, "unknown_request_id": 0,
                                                "duplicate": 0, "invalid": 0, "malformed": 0}
        self.undecodable = 0  # responses whose Content-Encoding could not be undone (or too large)
        self.kinds: dict[str, str] = {}  # route -> its `prediction:` kind
        self.accuracy: list[Any] = []  # Aggregate rows, refreshed in the background for metrics
        self.alerts_fired: dict[str, int] = {}
        self.on_scored: Callable[[FeedbackResult], None] | None = None
        # In a cluster: predictions are shared so that feedback posted to any member joins them.
        self.on_remembered: Callable[[list[Prediction]], None] | None = None
        self.lookup: Callable[[list[str]], Awaitable[list[Prediction]]] | None = None
        self.notify: Callable[[Alert], None] | None = None
        self._task: asyncio.Task[None] | None = None
        self._tokens = float(DRIFT_SAMPLES_PER_S)
        self._refilled = _monotonic()
        if self.config.feedback is not None:
            self._open_store(self.config.feedback.retention, self.config.feedback.max_rows)
        self.configure(config)

    def configure(self, config: Config) -> None:
        """Per-route settings that follow reloads (the rest takes effect at restart)."""
        self.kinds = {route.name: route.prediction for route in config.routes}

    def _open_store(self, retention: float, max_rows: int) -> None:
        path = self.state_dir / "feedback.sqlite3"
        try:
            self.store = FeedbackStore(path, retention, max_rows)
        except FeedbackStoreError as exc:
            aside = path.with_name(f"{path.name}.corrupt-{int(_time())}")
            with contextlib.suppress(OSError):
                path.rename(aside)
            self.problem = f"feedback store {path}: {exc.reason}; moved aside to {aside}, starting empty"
            log.error("%s", self.problem)
            self.store = FeedbackStore(path, retention, max_rows)

    # -- the request path
    def wants_body(self, request_id: bytes) -> bool:
        """Keep the response bytes of this request? Always for feedback, for a logged body, and
        for label drift at most DRIFT_SAMPLES_PER_S a second (parsing every response would cost
        the data path more than drift detection needs)."""
        if self.store is not None:
            return True
        if self.log is not None and self.log.config.include_bodies and self.log.wants(request_id):
            return True
        if self.detector is None:
            return False
        now = _monotonic()
        self._tokens = min(DRIFT_SAMPLES_PER_S, self._tokens + (now - self._refilled) * DRIFT_SAMPLES_PER_S)
        self._refilled = now
        if self._tokens >= 1:
            self._tokens -= 1
            return True
        return False

    def finished(self, request_id: bytes, route: str, backend: str, status: int, latency: float,
                 request_body: bytes | None, response_body: bytes | None, *, shadowed: bool,
                 client_request_id: bytes | None = None, encoding: str | None = None) -> None:
        """A live request ended. O(1): a bounded append; the rest happens in the background."""
        to_log = self.log is not None and not shadowed and self.log.wants(request_id)
        if response_body is None and not to_log:
            if self.detector is not None:
                self.detector.observe(backend, route, latency, status >= 500, None, None, _time())
            return
        client = client_request_id.decode("latin-1") if client_request_id and client_request_id != request_id \
            else None
        if not self._enqueue(Finished(request_id.decode("latin-1"), _time(), route, backend, status, latency,
                                      request_body, response_body, to_log, None, client, encoding)):
            self.dropped += 1

    def joined(self, item: Finished) -> None:
        """A shadowed request's record with both outputs, once the shadow is in (no detector pass):
        for the prediction log, and for feedback to score the shadow's prediction too."""
        to_log = self.log is not None and self.log.wants(item.request_id)
        if (to_log or self.store is not None) and not self._enqueue(item._replace(log=to_log)):
            self.dropped += 1

    def _enqueue(self, item: Finished) -> bool:
        size = item.size
        if len(self.queue) >= QUEUE_LIMIT or self.queued_bytes + size > QUEUE_BYTES:
            return False
        self.queue.append(item)
        self.queued_bytes += size
        return True

    def _take(self) -> list[Finished]:
        """The oldest records, up to 5,000 or BATCH_BYTES (at least one)."""
        batch: list[Finished] = []
        taken = 0
        while self.queue and len(batch) < 5000 and (not batch or taken < BATCH_BYTES):
            item = self.queue.popleft()
            taken += item.size
            batch.append(item)
        self.queued_bytes -= taken
        return batch

    # -- the background
    def start(self) -> None:
        if self.log is not None:
            self.log.start()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        last_eval = 0.0
        last_prune = _time()
        while True:
            await asyncio.sleep(0.2)
            with contextlib.suppress(Exception):
                await self._drain()
            now = _time()
            if self.detector is not None and now - last_eval >= 1.0:
                last_eval = now
                for alert in self.detector.evaluate(now):
                    if alert.state == "firing":
                        self.alerts_fired[alert.kind] = self.alerts_fired.get(alert.kind, 0) + 1
                    if self.notify is not None:
                        self.notify(alert)
            if self.store is not None and now - last_prune >= 60:
                last_prune = now
                await self.store.run(self.store.prune, now)
                self.accuracy = await self.store.run(self.store.aggregates)

    async def _drain(self) -> None:
        batch = self._take()
        if not batch:
            return
        remembered: list[Prediction] = []
        shadows: list[ShadowPrediction] = []
        for item in batch:
            body = self._decoded(item.response_body, item.encoding)
            if item.shadow is None:  # joined records were counted when their live side ended
                read = self._read(item.route, body)
                if self.detector is not None:
                    self.detector.observe(item.backend, item.route, item.latency, item.status >= 500, read.label,
                                          read.score, item.time)
                if self.store is not None and 200 <= item.status < 300:
                    remembered.append(Prediction(item.request_id, item.route, item.backend, item.time,
                                                 read.prediction, read.kind, read.note, item.client_request_id))
            elif self.store is not None:
                shadows.append(self._shadow_prediction(item))
            if item.log and self.log is not None:
                shadow = self._logged_shadow(item.shadow)
                rec = record(item.request_id, item.time, item.route, item.backend, item.status, item.latency,
                             item.request_body, body, shadow)
                if item.client_request_id is not None:
                    rec["client_request_id"] = item.client_request_id
                self.log.offer(rec)
        del batch, item  # the bodies: a slow store must not hold a batch of them beyond QUEUE_BYTES
        if (remembered or shadows) and self.store is not None:
            try:
                await self.store.run(self.store.remember_many, remembered, shadows)
            except FeedbackStoreError as exc:
                self.problem = f"feedback store: {exc.reason}"
                log.error("%s", self.problem)
            if self.on_remembered is not None:
                self.on_remembered(remembered)

    def _decoded(self, body: bytes | None, encoding: str | None) -> bytes | None:
        if body is None or not encoding:
            return body
        try:
            return decode(body, encoding, MAX_DECODED)
        except DecodeError:
            self.undecodable += 1
            return None

    def _read(self, route: str, body: bytes | None) -> Read:
        if body is None:
            return Read(None, "none", "the response was not kept (larger than monitoring.capture_bytes, "
                                      "or its Content-Encoding could not be decoded)")
        return read_prediction(body, self.kinds.get(route, "auto"))

    def _shadow_prediction(self, item: Finished) -> ShadowPrediction:
        s = item.shadow or {}
        if s.get("error") is not None or not 200 <= int(s.get("status") or 0) < 300:
            why = f"the shadow failed ({s.get('error') or 'status ' + str(s.get('status'))})"
            return ShadowPrediction(item.request_id, s["backend"], None, "none", why)
        read = self._read(item.route, self._decoded(s.get("response_body"), s.get("encoding")))
        return ShadowPrediction(item.request_id, s["backend"], read.prediction, read.kind, read.note)

    def _logged_shadow(self, shadow: dict[str, Any] | None) -> dict[str, Any] | None:
        if shadow is None:
            return None
        out = {k: v for k, v in shadow.items() if k != "encoding"}
        out["response_body"] = self._decoded(shadow.get("response_body"), shadow.get("encoding"))
        return out

    async def feedback(self, items: list[dict[str, Any]]) -> FeedbackResult:
        assert self.store is not None
        await self._drain()  # predictions still queued must be findable
        if self.lookup is not None:  # predictions another member served, fetched into this store
            ids = [str(i["request_id"]) for i in items if isinstance(i, dict) and isinstance(i.get("request_id"), str)]
            found = await self.lookup(ids)
            if found:
                await self.store.run(self.store.remember_many, found)
        result = await self.store.run(self.store.feedback, items)
        for key in ("accepted", "unscorable", "unknown_request_id", "duplicate", "invalid"):
            self.feedback_counts[key] += result.count(key)
        self.accuracy = await self.store.run(self.store.aggregates)
        if self.on_scored is not None:
            self.on_scored(result)
        return result

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        with contextlib.suppress(Exception):
            await self._drain()
        if self.log is not None:
            await self.log.close()
        if self.store is not None:
            self.store.close()


class AlertNotifier:
    """Posts alerts to the `notify` webhook of the routes they concern (rollout blocks name one)."""

    def __init__(self, runtime: Callable[[], Runtime]) -> None:
        self.runtime = runtime
        self.webhook = Webhook()

    def __call__(self, alert: Alert) -> None:
        route = self.runtime().table.by_name.get(alert.route)
        url = route.config.rollout.notify if route and route.config.rollout else None
        if url is not None:
            self.webhook.post(url, {"alert": alert.to_json()})

    async def close(self) -> None:
        await self.webhook.close()
