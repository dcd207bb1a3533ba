"""The rollout decision log: JSON lines in `state_dir/decisions.jsonl`, rotated by size.

Appends come from the rollout loop. When the next line would take the file past `max_bytes`, it
becomes `decisions.jsonl.1` (the older ones shift up to `.KEEP`, the oldest is deleted), so the
log never grows without bound. `tail()` reads backwards from the end, never the whole file, and
stops after `scan_bytes`: it costs the same with a 60 MB log as with an empty one. It blocks on
the disk, so the admin API calls it in a worker thread.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger("router.control.rollout")

MAX_BYTES = 16 * 1024 * 1024
KEEP = 4  # rotated files kept besides the current one
SCAN_BYTES = 16 * 1024 * 1024  # how far back one tail() call reads, over all files
BLOCK = 64 * 1024


class DecisionLog:
    """Append-only JSON lines with size rotation and a cheap tail."""

    def __init__(self, path: Path, max_bytes: int = MAX_BYTES, keep: int = KEEP, scan_bytes: int = SCAN_BYTES) -> None:
        self.path, self.max_bytes, self.keep, self.scan_bytes = path, max_bytes, keep, scan_bytes

    def rotated(self, i: int) -> Path:
        return self.path.with_name(f"{self.path.name}.{i}")

    def append(self, entry: dict[str, Any]) -> None:
        """Write one line; errors are logged, never raised (the rollout goes on without its log)."""
        line = (json.dumps(entry) + "\n").encode()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("ab") as f:
                if f.tell() and f.tell() + len(line) > self.max_bytes:
                    f.close()
                    self._rotate()
                    with self.path.open("ab") as fresh:
                        fresh.write(line)
                else:
                    f.write(line)
        except OSError as exc:
            log.error("cannot append to the decision log %s: %s", self.path, exc)

    def _rotate(self) -> None:
        for i in range(self.keep - 1, 0, -1):
            with contextlib.suppress(FileNotFoundError):
                os.replace(self.rotated(i), self.rotated(i + 1))
        if self.keep > 0:
            os.replace(self.path, self.rotated(1))
        else:
            os.unlink(self.path)

    def tail(self, route: str, n: int) -> list[dict[str, Any]]:
        """The last `n` entries of `route`, oldest first, from the newest `scan_bytes` of the log."""
        if n <= 0:
            return []
        # Lines are written by json.dumps with its default separators: filter before parsing.
        needle = b'"route": ' + json.dumps(route).encode()
        found: list[dict[str, Any]] = []
        reader = _Backwards(self.scan_bytes)
        for path in [self.path, *(self.rotated(i) for i in range(1, self.keep + 1))]:
            for line in reader.lines(path):
                if needle not in line:
                    continue
                with contextlib.suppress(ValueError):
                    entry = json.loads(line)
                    if isinstance(entry, dict) and entry.get("route") == route:
                        found.append(entry)
                        if len(found) >= n:
                            return found[::-1]
        return found[::-1]


class _Backwards:
    """Reads files' lines last first, BLOCK bytes at a time from the end, `budget` bytes in all."""

    def __init__(self, budget: int) -> None:
        self.left = budget

    def lines(self, path: Path) -> Iterator[bytes]:
        try:
            f = path.open("rb")
        except OSError:
            return
        with f:
            pos = f.seek(0, os.SEEK_END)
            rest = b""
            while pos > 0 and self.left > 0:
                size = min(BLOCK, pos, self.left)
                pos -= size
                self.left -= size
                f.seek(pos)
                lines = (f.read(size) + rest).split(b"\n")
                rest = lines[0]  # may continue in the block before
                yield from reversed([line for line in lines[1:] if line])
            if pos == 0 and rest:
                yield rest
