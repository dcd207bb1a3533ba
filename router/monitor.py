"""Model monitoring on the data path: prediction log, feedback loop and anomaly alerts, wired.

The request path only records what it already has (route, backend, status, latency) and, when a
component needs it, the response bytes it relayed (capped). Everything else happens off the
request path: a background task parses responses for the predicted label or score, feeds the
anomaly detector, remembers predictions for feedback (SQLite, on the store's own thread), and
writes the prediction log (on the log's thread). The queue between them is bounded; what does
not fit is dropped and counted, never waited for.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, NamedTuple

from router.alerts import Alert, AnomalyDetector
from router.config import Config, MonitoringConfig
from router.feedback import FeedbackResult, FeedbackStore, FeedbackStoreError, Kind, Prediction
from router.predlog import PredictionLog, record
from router.webhook import Webhook

if TYPE_CHECKING:
    from router.runtime import Runtime

log = logging.getLogger("router.monitor")
QUEUE_LIMIT = 20_000
DRIFT_SAMPLES_PER_S = 100
LABEL_KEYS = ("label", "class", "class_name", "predicted_label", "prediction")
SCORE_KEYS = ("scores", "probabilities", "probs", "score", "probability")


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
        self.dropped = 0
        self.feedback_counts: dict[str, int] = {"accepted": 0, "unknown_request_id": 0, "duplicate": 0,
                                                "invalid": 0, "malformed": 0}
        self.accuracy: list[Any] = []  # Aggregate rows, refreshed in the background for metrics
        self.alerts_fired: dict[str, int] = {}
        self.on_scored: Callable[[FeedbackResult], None] | None = None
        # In a cluster: predictions are shared so that feedback posted to any member joins them.
        self.on_remembered: Callable[[list[Prediction]], None] | None = None
        self.lookup: Callable[[list[str]], Awaitable[list[Prediction]]] | None = None
        self.notify: Callable[[Alert], None] | None = None
        self._task: asyncio.Task[None] | None = None
        self._tokens = float(DRIFT_SAMPLES_PER_S)
        self._refilled = time.monotonic()
        if self.config.feedback is not None:
            self._open_store(self.config.feedback.retention, self.config.feedback.max_rows)

    def _open_store(self, retention: float, max_rows: int) -> None:
        path = self.state_dir / "feedback.sqlite3"
        try:
            self.store = FeedbackStore(path, retention, max_rows)
        except FeedbackStoreError as exc:
            aside = path.with_name(f"{path.name}.corrupt-{int(time.time())}")
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
        now = time.monotonic()
        self._tokens = min(DRIFT_SAMPLES_PER_S, self._tokens + (now - self._refilled) * DRIFT_SAMPLES_PER_S)
        self._refilled = now
        if self._tokens >= 1:
            self._tokens -= 1
            return True
        return False

    def finished(self, request_id: bytes, route: str, backend: str, status: int, latency: float,
                 request_body: bytes | None, response_body: bytes | None, *, shadowed: bool) -> None:
        """A live request ended. O(1): a bounded append; the rest happens in the background."""
        to_log = self.log is not None and not shadowed and self.log.wants(request_id)
        if response_body is None and not to_log:
            if self.detector is not None:
                self.detector.observe(backend, route, latency, status >= 500, None, None, time.time())
            return
        if len(self.queue) >= QUEUE_LIMIT:
            self.dropped += 1
            return
        self.queue.append(Finished(request_id.decode("latin-1"), time.time(), route, backend, status, latency,
                                   request_body, response_body, to_log))

    def joined(self, item: Finished) -> None:
        """A shadowed request's record with both outputs, once the shadow is in (no detector pass)."""
        if self.log is not None and self.log.wants(item.request_id) and len(self.queue) < QUEUE_LIMIT:
            self.queue.append(item)

    # -- the background
    def start(self) -> None:
        if self.log is not None:
            self.log.start()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        last_eval = 0.0
        last_prune = time.time()
        while True:
            await asyncio.sleep(0.2)
            with contextlib.suppress(Exception):
                await self._drain()
            now = time.time()
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
        batch = [self.queue.popleft() for _ in range(min(len(self.queue), 5000))]
        if not batch:
            return
        remembered: list[Prediction] = []
        for item in batch:
            if item.shadow is None:  # joined records were counted when their live side ended
                label, score, kind = extract_prediction(item.response_body) if item.response_body else (None, None,
                                                                                                        "label")
                if self.detector is not None:
                    self.detector.observe(item.backend, item.route, item.latency, item.status >= 500, label, score,
                                          item.time)
                if self.store is not None and 200 <= item.status < 300:
                    value = label if kind == "label" else score
                    remembered.append(Prediction(item.request_id, item.route, item.backend, item.time, value, kind))
            if item.log and self.log is not None:
                self.log.offer(record(item.request_id, item.time, item.route, item.backend, item.status,
                                      item.latency, item.request_body, item.response_body, item.shadow))
        if remembered and self.store is not None:
            try:
                await self.store.run(self.store.remember_many, remembered)
            except FeedbackStoreError as exc:
                self.problem = f"feedback store: {exc.reason}"
                log.error("%s", self.problem)
            if self.on_remembered is not None:
                self.on_remembered(remembered)

    async def feedback(self, items: list[dict[str, Any]]) -> FeedbackResult:
        assert self.store is not None
        await self._drain()  # predictions still queued must be findable
        if self.lookup is not None:  # predictions another member served, fetched into this store
            ids = [str(i["request_id"]) for i in items if isinstance(i, dict) and isinstance(i.get("request_id"), str)]
            found = await self.lookup(ids)
            if found:
                await self.store.run(self.store.remember_many, found)
        result = await self.store.run(self.store.feedback, items)
        for key in ("accepted", "unknown_request_id", "duplicate", "invalid"):
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


def extract_prediction(body: bytes) -> tuple[str | None, float | None, Kind]:
    """(label, score, kind) of the first prediction in a response, for the common protocols.

    kind is "label" for classifiers and "value" for a bare number (regression). KServe V1,
    MLflow, TF Serving: `predictions[0]` as an object with a label and/or scores, a string, a
    number, or a score vector (argmax). Open Inference V2: the outputs named like label / scores.
    """
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None, None, "label"
    if not isinstance(doc, dict):
        return None, None, "label"
    if isinstance(doc.get("outputs"), list):
        return _from_v2(doc["outputs"])
    preds = doc.get("predictions")
    first = preds[0] if isinstance(preds, list) and preds else preds
    return _from_item(first)


def _from_item(item: object) -> tuple[str | None, float | None, Kind]:
    if isinstance(item, str):
        return item, None, "label"
    if isinstance(item, bool):
        return str(item).lower(), None, "label"
    if isinstance(item, int | float):
        return None, float(item), "value"
    if isinstance(item, list) and item and all(isinstance(x, int | float) for x in item):
        best = max(range(len(item)), key=lambda i: item[i])
        return str(best), float(item[best]), "label"
    if isinstance(item, dict):
        label = next((item[k] for k in LABEL_KEYS if isinstance(item.get(k), str | int)), None)
        score = _top_score(next((item[k] for k in SCORE_KEYS if k in item), None))
        return (str(label) if label is not None else None), score, "label"
    return None, None, "label"


def _top_score(value: object) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, list) and value and all(isinstance(x, int | float) for x in value):
        return float(max(value))
    return None


def _from_v2(outputs: list[Any]) -> tuple[str | None, float | None, Kind]:
    label = score = None
    for out in outputs:
        if not isinstance(out, dict) or not isinstance(out.get("data"), list) or not out["data"]:
            continue
        name = str(out.get("name", "")).lower()
        if any(k in name for k in ("label", "class")):
            label = str(out["data"][0])
        elif any(k in name for k in ("score", "prob")):
            shape = out.get("shape") or []
            width = shape[-1] if isinstance(shape, list) and len(shape) > 1 and isinstance(shape[-1], int) else 1
            score = _top_score(out["data"][:width])
    return label, score, "label"


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
