"""The feedback loop: join true outcomes to the predictions the router saw, and score each backend.

API (the lead does HTTP, metrics and the rollout wiring):

- `parse_feedback_body(raw) -> list[dict]`: one item (`{"request_id", "label"}`, or `"value"` for
  a regression) or a JSON array of up to `MAX_BATCH`. Raises `FeedbackError(status, message)`: 400
  for bad JSON or shape, an empty batch; 413 for more than `MAX_BATCH` items or `MAX_BODY_BYTES`.
  Items themselves are checked by `FeedbackStore.feedback`, so one bad item does not sink a batch.
- `FeedbackStore(path, retention_s, max_rows)`: SQLite in WAL mode; raises `FeedbackStoreError`
  (with the path) when the file is not a usable database, then and on any later SQLite failure.
  - `remember_many(predictions)` / `remember(...)`: store predictions awaiting feedback, one
    transaction per call (call it from a background flush with a batch, not per request). A
    request id already stored keeps its first prediction; the rest are counted in `conflicts`.
  - `feedback(items, now) -> FeedbackResult`: per item, "accepted", "unknown_request_id" (never
    seen or past retention), "duplicate" (already answered, also within one batch) or
    "invalid: <why>". Accepted feedback updates the per-(route, backend) aggregates in the same
    transaction. `FeedbackResult.scored` lists what was accepted (route, backend, prediction time,
    correct, error) so the rollout loop can count labelled/correct for its own step window.
    `FeedbackResult.status` suggests the HTTP status: 200 if anything was accepted.
  - `quality(route, primary=None, candidate=None) -> dict`: per backend, accuracy with its
    Wilson 95% interval, MAE and RMSE, counts and predictions still pending, and with both names
    the candidate-minus-primary accuracy delta with a Newcombe interval. `aggregates()` is the cheap
    form for metrics (no table scan).
  - `prune(now) -> int`: drop predictions older than `retention_s`, then the oldest beyond
    `max_rows`. Call it every minute or so. `close()`.
  - counters: accepted, unknown, duplicate, invalid, remembered, conflicts, pruned.

Threads: SQLite calls block on disk, so never call these from the event loop. `await store.run(fn,
*args)` runs one on the store's own single worker thread, so the connection is only ever used from
one thread; a lock also serialises direct calls. Several router processes may share the file: the
aggregates are added to, never overwritten.
"""

from __future__ import annotations

import asyncio
import json
import math
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NamedTuple, TypeVar, cast

from router.analysis.stats_tests import wilson_interval

# label: a class; value: a regression value; number: an integer read where the route did not say
# which (scored as a label when the feedback is a label, as a value when it is a value); none: no
# prediction could be read (the row keeps why, so feedback can say it).
StoredKind = Literal["label", "value", "number", "none"]
KINDS = ("label", "value", "number", "none")
MAX_BATCH = 1000
MAX_BODY_BYTES = 1024 * 1024
MAX_ID = 256
MAX_LABEL = 1024
SCHEMA_VERSION = 2
_T = TypeVar("_T")
_ITEM_KEYS = frozenset({"request_id", "label", "value"})
_SCHEMA = """
CREATE TABLE IF NOT EXISTS predictions (
    request_id TEXT PRIMARY KEY, route TEXT NOT NULL, backend TEXT NOT NULL, time REAL NOT NULL,
    kind TEXT NOT NULL, prediction, truth, answered_at REAL,
    note TEXT, client_id TEXT, shadow_backend TEXT, shadow_kind TEXT, shadow_prediction, shadow_note TEXT);
CREATE INDEX IF NOT EXISTS predictions_time ON predictions (time);
CREATE TABLE IF NOT EXISTS quality (
    route TEXT NOT NULL, backend TEXT NOT NULL, labelled INTEGER NOT NULL, correct INTEGER NOT NULL,
    valued INTEGER NOT NULL, sum_abs REAL NOT NULL, sum_sq REAL NOT NULL, unscored INTEGER NOT NULL,
    PRIMARY KEY (route, backend));
"""


class FeedbackError(Exception):
    """A feedback request body that cannot be used at all; `status` is the HTTP status to answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class FeedbackStoreError(Exception):
    """The database at `path` cannot be opened or used (corrupt, not SQLite, another schema, I/O)."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"feedback store {path}: {reason}")
        self.path = path
        self.reason = reason


# Version 1 files gain the columns added in 2; nothing else changed.
_MIGRATE_1 = [f"ALTER TABLE predictions ADD COLUMN {c}" for c in (
    "note TEXT", "client_id TEXT", "shadow_backend TEXT", "shadow_kind TEXT", "shadow_prediction", "shadow_note TEXT")]


class Prediction(NamedTuple):
    """A prediction awaiting feedback (see StoredKind). `request_id` is the router's own id for the
    request (a client cannot choose it); `client_id` is the client's X-Request-Id, kept for reference."""

    request_id: str
    route: str
    backend: str
    time: float
    prediction: str | float | None
    kind: StoredKind = "label"
    note: str | None = None  # why there is no prediction
    client_id: str | None = None


class ShadowPrediction(NamedTuple):
    """The shadow's prediction for the same request, stored beside the live one so that feedback
    scores both (a shadow-only rollout step then has accuracy evidence)."""

    request_id: str
    backend: str
    prediction: str | float | None
    kind: StoredKind = "label"
    note: str | None = None


class Scored(NamedTuple):
    """One accepted piece of feedback: `correct` for labels, `error` (truth - prediction) for values;
    both None when no prediction had been extracted."""

    route: str
    backend: str
    predicted_at: float
    correct: bool | None
    error: float | None
    shadow: bool = False  # the shadow's prediction of the request scored just before, with the same truth


class Aggregate(NamedTuple):
    route: str
    backend: str
    labelled: int
    correct: int
    valued: int
    sum_abs: float
    sum_sq: float
    unscored: int


@dataclass(frozen=True, slots=True)
class FeedbackResult:
    """Per-item outcomes, in request order."""

    outcomes: tuple[tuple[str | None, str], ...]  # (request_id or None, outcome)
    scored: tuple[Scored, ...]

    def count(self, outcome: str) -> int:
        return sum(1 for _, o in self.outcomes if o == outcome or o.startswith(outcome + ":"))

    @property
    def status(self) -> int:
        """200 when anything was accepted (per-item outcomes tell the rest); otherwise 422 if any
        item was invalid, else 404 if any id was unknown, else 409 (all duplicates)."""
        if self.count("accepted"):
            return 200
        if self.count("invalid") or self.count("unscorable"):
            return 422
        return 404 if self.count("unknown_request_id") else 409

    def to_json(self) -> dict[str, Any]:
        counts = {k: self.count(k) for k in ("accepted", "unscorable", "unknown_request_id", "duplicate", "invalid")}
        return {**counts, "items": [{"request_id": rid, "outcome": o} for rid, o in self.outcomes]}


def parse_feedback_body(raw: bytes) -> list[dict[str, Any]]:
    if len(raw) > MAX_BODY_BYTES:
        raise FeedbackError(413, f"feedback body is {len(raw)} bytes; the limit is {MAX_BODY_BYTES}")
    try:
        doc = json.loads(raw, parse_int=_json_int)
    except ValueError as exc:  # also bad UTF-8
        raise FeedbackError(400, f"feedback body is not valid JSON: {exc}") from None
    except RecursionError:
        raise FeedbackError(400, "feedback body is nested too deeply") from None
    if isinstance(doc, dict):
        return [doc]
    if not isinstance(doc, list):
        raise FeedbackError(400, 'feedback body must be an object {"request_id": ..., "label": ...} '
                                 "or an array of them")
    if not doc:
        raise FeedbackError(400, "feedback batch is empty")
    if len(doc) > MAX_BATCH:
        raise FeedbackError(413, f"feedback batch has {len(doc)} items; the limit is {MAX_BATCH}")
    return doc


def _json_int(digits: str) -> int | float:
    """Integers too big for a float become inf, which the item check rejects as not finite: a huge
    value must make its own item invalid, not raise OverflowError and sink the whole batch."""
    return int(digits) if len(digits) < 300 else float(digits)


class FeedbackStore:
    """Predictions awaiting feedback and per-backend quality aggregates, in one SQLite file."""

    def __init__(self, path: Path, retention_s: float = 7 * 86400, max_rows: int = 1_000_000) -> None:
        if retention_s <= 0 or max_rows < 1:
            raise ValueError("retention_s must be > 0 and max_rows >= 1")
        self.path, self.retention_s, self.max_rows = path, retention_s, max_rows
        self.accepted = self.unknown = self.duplicate = self.invalid = 0
        self.remembered = self.conflicts = self.pruned = 0
        self.unscorable = self.shadow_unjoined = 0
        self._lock = threading.Lock()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="feedback-sqlite")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # check_same_thread off: opened here, used on the worker thread; the lock serialises.
            self._db = sqlite3.connect(path, timeout=5.0, check_same_thread=False)
        except (OSError, sqlite3.Error) as exc:
            self._executor.shutdown()
            raise FeedbackStoreError(path, f"cannot open: {exc}") from exc
        try:
            self._setup()
        except BaseException:
            self.close()
            raise

    def _setup(self) -> None:
        with self._guard():
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            if version not in (0, 1, SCHEMA_VERSION):
                raise FeedbackStoreError(self.path, f"schema version {version}; this router knows {SCHEMA_VERSION}")
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")  # WAL: safe against crashes, not power cuts
            if version == 1:
                for statement in _MIGRATE_1:
                    self._db.execute(statement)
            self._db.executescript(_SCHEMA)
            self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    @contextmanager
    def _guard(self) -> Iterator[None]:
        with self._lock:
            try:
                yield
            except sqlite3.Error as exc:
                raise FeedbackStoreError(self.path, f"{type(exc).__name__}: {exc}") from exc

    async def run(self, fn: Callable[..., _T], *args: Any) -> _T:
        """`await store.run(store.feedback, items)`: run a method on the store's worker thread."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def close(self) -> None:
        with self._lock:
            self._db.close()
        self._executor.shutdown(wait=False)

    # -- predictions in
    def remember(self, request_id: str, route: str, backend: str, time: float, prediction: str | float | None,
                 kind: StoredKind = "label") -> None:
        self.remember_many([Prediction(request_id, route, backend, time, prediction, kind)])

    def remember_many(self, predictions: Iterable[Prediction], shadows: Iterable[ShadowPrediction] = ()) -> None:
        """Store live predictions, then attach shadow predictions to rows already stored (in the
        same call or earlier); a shadow prediction whose live row is not there is counted."""
        rows = [(p.request_id, p.route, p.backend, p.time, p.kind, _stored(p.prediction, p.kind), p.note, p.client_id)
                for p in predictions]
        shadow_rows = [(s.backend, s.kind, _stored(s.prediction, s.kind), s.note, s.request_id) for s in shadows]
        if not rows and not shadow_rows:
            return
        with self._guard(), self._db:
            cur = self._db.executemany("INSERT OR IGNORE INTO predictions (request_id, route, backend, time, kind, "
                                       "prediction, note, client_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
            inserted = cur.rowcount if rows else 0
            joined = 0
            for row in shadow_rows:
                joined += self._db.execute("UPDATE predictions SET shadow_backend = ?, shadow_kind = ?, "
                                           "shadow_prediction = ?, shadow_note = ? WHERE request_id = ? AND "
                                           "shadow_backend IS NULL", row).rowcount
        self.remembered += inserted
        self.conflicts += len(rows) - inserted
        self.shadow_unjoined += len(shadow_rows) - joined

    # -- feedback in
    def feedback(self, items: list[Any], now: float | None = None) -> FeedbackResult:
        now = time.time() if now is None else now
        outcomes: list[tuple[str | None, str]] = []
        scored: list[Scored] = []
        with self._guard(), self._db:
            for item in items:
                rid, outcome = self._one(item, now, scored)
                outcomes.append((rid, outcome))
            self._add(scored)
        for _, outcome in outcomes:
            if outcome == "accepted":
                self.accepted += 1
            elif outcome == "unknown_request_id":
                self.unknown += 1
            elif outcome == "duplicate":
                self.duplicate += 1
            elif outcome.startswith("unscorable"):
                self.unscorable += 1
            else:
                self.invalid += 1
        return FeedbackResult(tuple(outcomes), tuple(scored))

    def _one(self, item: Any, now: float, scored: list[Scored]) -> tuple[str | None, str]:
        problem = _item_problem(item)
        rid = item.get("request_id") if isinstance(item, dict) and isinstance(item.get("request_id"), str) else None
        if problem is not None or rid is None:
            return rid, f"invalid: {problem}"
        row = self._db.execute("SELECT route, backend, time, kind, prediction, answered_at, note, shadow_backend, "
                               "shadow_kind, shadow_prediction, shadow_note FROM predictions WHERE request_id = ?",
                               (rid,)).fetchone()
        if row is None:
            return rid, "unknown_request_id"
        route, backend, predicted_at, kind, prediction, answered_at, note, *shadow = row
        if answered_at is not None:
            return rid, "duplicate"
        live = _score(item, kind, prediction, note)
        if isinstance(live, str) and live.startswith("invalid"):
            return rid, live.replace("this request", f"request {rid!r}")
        scored.append(Scored(route, backend, predicted_at, *(live if isinstance(live, tuple) else (None, None))))
        if shadow[0] is not None:  # the shadow's prediction, scored with the same truth
            theirs = _score(item, *shadow[1:])
            scored.append(Scored(route, shadow[0], predicted_at, *(theirs if isinstance(theirs, tuple) else
                                                                   (None, None)), shadow=True))
        truth = item["value"] if "value" in item else _label_text(item["label"])
        self._db.execute("UPDATE predictions SET truth = ?, answered_at = ? WHERE request_id = ?", (truth, now, rid))
        return rid, "accepted" if isinstance(live, tuple) else live

    def _add(self, scored: list[Scored]) -> None:
        sums: dict[tuple[str, str], list[float]] = {}
        for s in scored:
            a = sums.setdefault((s.route, s.backend), [0, 0, 0, 0.0, 0.0, 0])
            if s.correct is not None:
                a[0] += 1
                a[1] += s.correct
            elif s.error is not None:
                a[2] += 1
                a[3] += abs(s.error)
                a[4] += s.error * s.error
            else:
                a[5] += 1
        self._db.executemany(
            "INSERT INTO quality VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (route, backend) DO UPDATE SET "
            "labelled = labelled + excluded.labelled, correct = correct + excluded.correct, "
            "valued = valued + excluded.valued, sum_abs = sum_abs + excluded.sum_abs, "
            "sum_sq = sum_sq + excluded.sum_sq, unscored = unscored + excluded.unscored",
            [(r, b, int(a[0]), int(a[1]), int(a[2]), a[3], a[4], int(a[5])) for (r, b), a in sums.items()])

    # -- results out
    def aggregates(self, route: str | None = None) -> list[Aggregate]:
        where, args = ("WHERE route = ?", (route,)) if route is not None else ("", ())
        with self._guard():
            rows = self._db.execute(f"SELECT * FROM quality {where} ORDER BY route, backend", args).fetchall()
        return [Aggregate(*row) for row in rows]

    def quality(self, route: str, primary: str | None = None, candidate: str | None = None) -> dict[str, Any]:
        """Scores per backend of `route`; reads all of the route's pending rows (for the admin API)."""
        aggs = {a.backend: a for a in self.aggregates(route)}
        with self._guard():
            pending = dict(self._db.execute("SELECT backend, COUNT(*) FROM predictions WHERE route = ? AND "
                                            "answered_at IS NULL GROUP BY backend", (route,)).fetchall())
            for name, n in self._db.execute("SELECT shadow_backend, COUNT(*) FROM predictions WHERE route = ? AND "
                                            "answered_at IS NULL AND shadow_backend IS NOT NULL GROUP BY "
                                            "shadow_backend", (route,)).fetchall():
                pending[name] = pending.get(name, 0) + n
        backends = {name: _scores(aggs.get(name), pending.get(name, 0)) for name in sorted({*aggs, *pending})}
        delta = None
        if primary is not None and candidate is not None and primary in aggs and candidate in aggs:
            delta = accuracy_delta(aggs[primary], aggs[candidate])
        return {"route": route, "backends": backends, "accuracy_delta": delta}

    def prune(self, now: float) -> int:
        with self._guard(), self._db:
            gone = self._db.execute("DELETE FROM predictions WHERE time < ?", (now - self.retention_s,)).rowcount
            excess = self._db.execute("SELECT COUNT(*) FROM predictions").fetchone()[0] - self.max_rows
            if excess > 0:
                gone += self._db.execute("DELETE FROM predictions WHERE rowid IN (SELECT rowid FROM predictions "
                                         "ORDER BY time LIMIT ?)", (excess,)).rowcount
        self.pruned += gone
        return gone


def accuracy_delta(primary: Aggregate, candidate: Aggregate, confidence: float = 0.95) -> dict[str, Any] | None:
    """Candidate accuracy minus primary's, with Newcombe's hybrid score interval (built from the
    two Wilson intervals, so it stays sensible at 0% or 100% and small counts)."""
    if not primary.labelled or not candidate.labelled:
        return None
    pc, pp = candidate.correct / candidate.labelled, primary.correct / primary.labelled
    lc, uc = wilson_interval(candidate.correct, candidate.labelled, confidence)
    lp, up = wilson_interval(primary.correct, primary.labelled, confidence)
    d = pc - pp
    return {"primary": primary.backend, "candidate": candidate.backend, "delta": d,
            "low": d - math.hypot(pc - lc, up - pp), "high": d + math.hypot(uc - pc, pp - lp),
            "confidence": confidence, "n_primary": primary.labelled, "n_candidate": candidate.labelled}


def _scores(a: Aggregate | None, pending: int) -> dict[str, Any]:
    out: dict[str, Any] = {"pending": pending, "labelled": 0, "correct": 0, "accuracy": None, "valued": 0,
                           "mae": None, "rmse": None, "unscored": 0}
    if a is None:
        return out
    out.update(labelled=a.labelled, correct=a.correct, valued=a.valued, unscored=a.unscored)
    if a.labelled:
        low, high = wilson_interval(a.correct, a.labelled)
        out["accuracy"] = {"rate": a.correct / a.labelled, "low": low, "high": high, "confidence": 0.95}
    if a.valued:
        out["mae"], out["rmse"] = a.sum_abs / a.valued, math.sqrt(a.sum_sq / a.valued)
    return out


def _is_number(x: object) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def _label_text(x: object) -> str:
    """One spelling per label: 1, 1.0 and "1" are the same class."""
    if isinstance(x, float) and x.is_integer():
        return str(int(x))
    return x if isinstance(x, str) else repr(x)


def _stored(prediction: str | float | None, kind: StoredKind) -> str | float | None:
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    if prediction is None or kind == "none":
        return None
    if kind in ("value", "number"):
        return float(prediction)
    return _label_text(prediction)


Score = tuple[bool | None, float | None]  # (correct, error), as in Scored


def _score(item: dict[str, Any], kind: str, prediction: object, note: str | None) -> Score | str:
    """How the truth in `item` scores one stored prediction: (correct, error), or the outcome
    ("invalid: ..." for feedback of the wrong kind, "unscorable: ..." when nothing can be scored)."""
    if prediction is None or kind == "none":
        why = note or "no prediction was read from the response"
        return f"unscorable: {why}"
    truth = item.get("value", item.get("label"))
    if kind == "label":
        if "value" in item:
            return "invalid: this request predicted a class label; send 'label', not 'value'"
        return _label_text(truth) == prediction, None
    if "label" in item and kind == "number":  # an integer read without a declared kind: a class
        return _label_text(truth) == _label_text(prediction), None
    if not _is_number(truth):
        return "invalid: this request predicted a value; send a numeric label or value"
    assert isinstance(prediction, int | float)
    return None, float(cast(float, truth)) - float(prediction)


def _item_problem(item: object) -> str | None:
    if not isinstance(item, dict):
        return "an item must be a JSON object"
    if unknown := sorted(set(item) - _ITEM_KEYS):
        return f"unknown field {unknown[0]!r} (expected request_id and label or value)"
    rid = item.get("request_id")
    if not isinstance(rid, str) or not 0 < len(rid) <= MAX_ID:
        return f"request_id must be a string of 1 to {MAX_ID} characters"
    if ("label" in item) == ("value" in item):
        return "give exactly one of label or value"
    if "value" in item and not _is_number(item["value"]):
        return "value must be a finite number"
    label = item.get("label")
    if "label" in item and not (_is_number(label) or (isinstance(label, str) and 0 < len(label) <= MAX_LABEL)):
        return f"label must be a finite number or a string of 1 to {MAX_LABEL} characters"
    return None
