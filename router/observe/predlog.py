"""The prediction log: one JSON line per sampled request, written away from the request path.

API (the lead wires it in):

- `PredictionLogConfig(path, ...)`: frozen; `__post_init__` raises ValueError on a bad value or
  redaction path. `redact` entries are `$.a.b`, `$.a[*].b` (any `router.analysis.compare.parse_path` path);
  an entry without `$` is a top-level key path (`"instances"` means `$.instances`).
- `record(request_id, time, route, backend, status, latency_s, request_body, response_body,
  shadow=None) -> dict`: the raw record; bodies stay bytes. For a shadowed request call it once,
  after the comparison, with `shadow={"backend", "status", "latency_s", "response_body", "error"}`
  so both outputs sit side by side in one line.
- `PredictionLog(config)`: `wants(request_id)` is the sampling decision alone (check it before
  keeping bodies); `offer(record) -> bool` is O(1) and never blocks: False when sampled out, full
  or closed, each counted. `start()` (inside a running loop) and `await close()` (flushes what is
  queued). `counters()` for metrics: written, sampled_out, dropped_full, dropped_closed,
  write_errors, rotations, bodies_withheld.

Sampling hashes the request id (BLAKE2b, not the salted `hash()`), so every process, a restart,
and the live and shadow halves of one request agree. Truncation, redaction and JSON encoding run
in a worker thread (`asyncio.to_thread`); the queue is bounded in records and in body bytes.

Line format: `request_id`, `time` (RFC 3339 UTC), `route`, `backend`, `status`, `latency_s`, and
with `include_bodies`: `request_body` / `response_body` embedded as JSON when they fit in
`max_body_bytes` after redaction, else as cut text with `<name>_truncated: true`. A body that
cannot be redacted (not JSON, or over `max_redact_bytes`) is left out and `<name>_redacted` says
why: redaction configured means a value is never logged unredacted. Rotation renames
`predictions.jsonl` to `.1` (and `.1` to `.2`, ...) before a line would pass `max_file_bytes`.

A full disk never tears a line: the file is written unbuffered, every write's count is checked,
and after a failed write the file is cut back to the end of its last complete line. Only records
whose line did not reach the file count as `write_errors`.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import json
import logging
import os
import threading
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from router.analysis.jsonpath import ANY, JsonPath, parse_path

log = logging.getLogger("router.observe.predlog")

REDACTED = "[REDACTED]"
BODY_KEYS = ("request_body", "response_body")
BATCH = 1000  # records per trip to the worker thread


@dataclass(frozen=True, slots=True)
class PredictionLogConfig:
    """Where and what the prediction log writes; validated once, at load."""

    path: Path
    sample_rate: float = 1.0
    include_bodies: bool = False
    max_body_bytes: int = 4096
    redact: tuple[str, ...] = ()
    max_file_bytes: int = 64 * 1024 * 1024
    keep_files: int = 5  # rotated files kept: path.1 .. path.N
    queue_size: int = 10_000
    max_queue_bytes: int = 64 * 1024 * 1024  # body bytes held by queued records
    max_redact_bytes: int = 1024 * 1024  # larger JSON bodies are not parsed (the GIL is shared)
    redact_paths: tuple[JsonPath, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not 0.0 <= self.sample_rate <= 1.0:
            raise ValueError(f"sample_rate must lie in [0, 1], got {self.sample_rate!r}")
        for name in ("max_body_bytes", "max_file_bytes", "queue_size", "max_queue_bytes", "max_redact_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)!r}")
        if self.keep_files < 0:
            raise ValueError(f"keep_files must be >= 0, got {self.keep_files!r}")
        paths = tuple(parse_path(p if p.startswith("$") else "$." + p) for p in self.redact)
        object.__setattr__(self, "redact_paths", paths)


def record(request_id: str | bytes, time: float, route: str, backend: str, status: int, latency_s: float,
           request_body: bytes | None = None, response_body: bytes | None = None,
           shadow: dict[str, Any] | None = None) -> dict[str, Any]:
    """The raw record for `PredictionLog.offer`; all rendering is deferred to the writer thread."""
    rec: dict[str, Any] = {"request_id": request_id, "time": time, "route": route, "backend": backend,
                           "status": status, "latency_s": latency_s,
                           "request_body": request_body, "response_body": response_body}
    if shadow is not None:
        rec["shadow"] = shadow
    return rec


def sample_point(request_id: str | bytes) -> float:
    """Where a request id falls in [0, 1): the same in every process and across restarts."""
    raw = request_id.encode() if isinstance(request_id, str) else request_id
    return int.from_bytes(hashlib.blake2b(raw, digest_size=8).digest(), "big") / 2.0**64


class PredictionLog:
    """A bounded queue of records and the task that drains it to disk in batches."""

    def __init__(self, config: PredictionLogConfig) -> None:
        self.config = config
        self._queue: deque[tuple[dict[str, Any], int]] = deque()
        self._queued_bytes = 0
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._sink = _Sink(config)
        self.sampled_out = 0
        self.dropped_full = 0
        self.dropped_closed = 0

    def wants(self, request_id: str | bytes) -> bool:
        rate = self.config.sample_rate
        return rate >= 1.0 or (rate > 0.0 and sample_point(request_id) < rate)

    def offer(self, rec: dict[str, Any]) -> bool:
        if self._closed:
            self.dropped_closed += 1
            return False
        if not self.wants(rec["request_id"]):
            self.sampled_out += 1
            return False
        if self.config.include_bodies:
            size = _body_bytes(rec)
        else:  # let go of the bodies now rather than hold them in the queue
            size = 0
            rec.pop("request_body", None)
            rec.pop("response_body", None)
            if isinstance(shadow := rec.get("shadow"), dict):
                shadow.pop("response_body", None)
        if len(self._queue) >= self.config.queue_size or self._queued_bytes + size > self.config.max_queue_bytes:
            self.dropped_full += 1
            return False
        self._queue.append((rec, size))
        self._queued_bytes += size
        self._wake.set()
        return True

    @property
    def queued(self) -> int:
        return len(self._queue)

    def counters(self) -> dict[str, int]:
        s = self._sink
        return {"written": s.written, "sampled_out": self.sampled_out, "dropped_full": self.dropped_full,
                "dropped_closed": self.dropped_closed, "write_errors": s.write_errors, "rotations": s.rotations,
                "bodies_withheld": s.bodies_withheld}

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="prediction-log")

    async def close(self, timeout: float = 10.0) -> None:
        """Stop taking records, write what is queued (within `timeout`), close the file."""
        self._closed = True
        self._wake.set()
        if self._task is None:  # never started: write the backlog here
            self.start()
        assert self._task is not None
        try:
            await asyncio.wait_for(asyncio.shield(self._task), timeout)
        except TimeoutError:
            self._task.cancel()
            self.dropped_closed += len(self._queue)
            self._queue.clear()
            log.error("prediction log: close timed out after %gs; queued records dropped", timeout)
        await asyncio.to_thread(self._sink.close)

    async def _run(self) -> None:
        while True:
            if not self._queue:
                if self._closed:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            batch = []
            for _ in range(min(BATCH, len(self._queue))):
                rec, size = self._queue.popleft()
                self._queued_bytes -= size
                batch.append(rec)
            try:
                await asyncio.to_thread(self._sink.write, batch)
            except Exception:  # a bug must cost this batch, not stop the writer for good
                self._sink.write_errors += len(batch)
                log.exception("prediction log: batch of %d records lost", len(batch))


def _body_bytes(rec: dict[str, Any]) -> int:
    shadow = rec.get("shadow")
    parts = [rec.get(k) for k in BODY_KEYS] + [shadow.get("response_body") if isinstance(shadow, dict) else None]
    return sum(len(p) for p in parts if isinstance(p, bytes | bytearray))


class _Sink:
    """The file side; every method runs in a worker thread, one call at a time (the lock covers a
    close that times out while a batch is still being written)."""

    def __init__(self, config: PredictionLogConfig) -> None:
        self.config = config
        self.lock = threading.Lock()
        self.file: IO[bytes] | None = None
        self.size = 0
        self.written = 0
        self.write_errors = 0
        self.rotations = 0
        self.bodies_withheld = 0

    def write(self, batch: list[dict[str, Any]]) -> None:
        lines = []
        for rec in batch:
            try:
                lines.append(json.dumps(self.render(rec), separators=(",", ":"), default=str).encode() + b"\n")
            except (TypeError, ValueError) as exc:
                self.write_errors += 1
                log.error("prediction log: cannot encode record %r: %s", rec.get("request_id"), exc)
        with self.lock:
            written = self.written
            try:
                self._append(lines)
            except OSError as exc:
                self.write_errors += len(lines) - (self.written - written)
                log.error("prediction log: cannot write %s: %s", self.config.path, exc)
                self._close()  # reopened on the next batch

    def _append(self, lines: list[bytes]) -> None:
        pending: list[bytes] = []
        pending_bytes = 0
        for line in lines:
            if self.file is None:
                self._open()
            if self.size + pending_bytes and self.size + pending_bytes + len(line) > self.config.max_file_bytes:
                self._flush(pending)
                pending_bytes = 0
                self._rotate()
            pending.append(line)
            pending_bytes += len(line)
        self._flush(pending)

    def _flush(self, pending: list[bytes]) -> None:
        """Write whole lines; on failure keep the complete ones, cut the torn one off, and raise.
        No fsync: a log line lost to a power cut is acceptable."""
        if not pending or self.file is None:
            return
        data = memoryview(b"".join(pending))
        done = 0
        try:
            while done < len(data):
                n = self.file.write(data[done:])
                if not n:
                    raise OSError(errno.ENOSPC, "no byte written")
                done += n
        except OSError:
            complete, kept = 0, 0
            while complete < len(pending) and kept + len(pending[complete]) <= done:
                kept += len(pending[complete])
                complete += 1
            self._cut(self.size + kept)
            self.written += complete
            raise
        self.size += done
        self.written += len(pending)
        pending.clear()

    def _cut(self, size: int) -> None:
        """Drop a torn last line so the file holds only complete ones."""
        assert self.file is not None
        try:
            os.ftruncate(self.file.fileno(), size)
            self.size = size
        except OSError as exc:
            log.error("prediction log: cannot cut a torn line off %s: %s", self.config.path, exc)

    def _open(self) -> None:
        path = self.config.path
        path.parent.mkdir(parents=True, exist_ok=True)
        # Unbuffered: each write's byte count is seen, so a short write is never taken for a whole one.
        self.file = open(path, "ab", buffering=0)  # noqa: SIM115 - held open across batches, closed in close()
        self.size = self.file.tell()

    def _rotate(self) -> None:
        self._close()
        path, keep = self.config.path, self.config.keep_files
        if keep == 0:
            path.unlink(missing_ok=True)
        else:
            for i in range(keep - 1, 0, -1):
                with contextlib.suppress(FileNotFoundError):
                    os.replace(f"{path}.{i}", f"{path}.{i + 1}")
            os.replace(path, f"{path}.1")
        self.rotations += 1
        self._open()

    def close(self) -> None:
        with self.lock:
            self._close()

    def _close(self) -> None:
        if self.file is not None:
            with contextlib.suppress(OSError):
                self.file.close()
            self.file = None

    def render(self, rec: dict[str, Any]) -> dict[str, Any]:
        out = {k: v for k, v in rec.items() if k not in BODY_KEYS and k != "shadow"}
        if isinstance(out.get("request_id"), bytes):
            out["request_id"] = out["request_id"].decode("latin-1")
        if isinstance(out.get("time"), int | float):
            out["time"] = datetime.fromtimestamp(out["time"], UTC).isoformat(timespec="milliseconds")
        if self.config.include_bodies:
            for key in BODY_KEYS:
                out.update(self._body(key, rec.get(key)))
        shadow = rec.get("shadow")
        if isinstance(shadow, dict):
            rendered = {k: v for k, v in shadow.items() if k not in BODY_KEYS}
            if self.config.include_bodies:
                rendered.update(self._body("response_body", shadow.get("response_body")))
            out["shadow"] = rendered
        return out

    def _body(self, name: str, raw: object) -> dict[str, Any]:
        if not isinstance(raw, bytes | bytearray) or not raw:
            return {}
        cfg = self.config
        if cfg.redact_paths and len(raw) > cfg.max_redact_bytes:
            return self._withheld(name, f"too large to redact ({len(raw)} bytes)")
        doc: object = _NOT_JSON
        if cfg.redact_paths or len(raw) <= cfg.max_body_bytes:
            with contextlib.suppress(ValueError):  # UnicodeDecodeError included
                doc = json.loads(raw)
        if doc is _NOT_JSON:
            if cfg.redact_paths:
                return self._withheld(name, "not JSON")
            return _cut(name, bytes(raw), cfg.max_body_bytes)
        for path in cfg.redact_paths:
            doc = redact(doc, path)
        text = json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()
        return {name: doc} if len(text) <= cfg.max_body_bytes else _cut(name, text, cfg.max_body_bytes)

    def _withheld(self, name: str, why: str) -> dict[str, Any]:
        self.bodies_withheld += 1
        return {f"{name}_redacted": why}


_NOT_JSON = object()


def _cut(name: str, raw: bytes, limit: int) -> dict[str, Any]:
    if len(raw) <= limit:
        return {name: raw.decode("utf-8", "replace")}
    # "ignore": a multi-byte character split by the cut is dropped, not turned into garbage
    return {name: raw[:limit].decode("utf-8", "ignore"), f"{name}_truncated": True}


def redact(doc: object, path: JsonPath) -> object:
    """`doc` with every value `path` names replaced by "[REDACTED]" (in place; the root is returned)."""
    if not path.segments:
        return REDACTED
    parents: list[object] = [doc]
    for segment in path.segments[:-1]:
        parents = [child for node in parents for child in _children(node, segment)]
    last = path.segments[-1]
    for node in parents:
        if isinstance(node, dict):
            keys = list(node) if last is ANY else [last] if last in node else []
            for key in keys:
                node[key] = REDACTED
        elif isinstance(node, list):
            indices = range(len(node)) if last is ANY else [last] if isinstance(last, int) and last < len(node) else []
            for i in indices:
                node[i] = REDACTED
    return doc


def _children(node: object, segment: object) -> list[object]:
    if isinstance(node, dict):
        return list(node.values()) if segment is ANY else [node[segment]] if segment in node else []
    if isinstance(node, list):
        if segment is ANY:
            return list(node)
        return [node[segment]] if isinstance(segment, int) and segment < len(node) else []
    return []
