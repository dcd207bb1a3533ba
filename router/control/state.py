"""What must survive a restart, kept as JSON in `state_dir` and written atomically.

Writes go to a temporary file that is fsynced and renamed over the old one, then the directory
is fsynced, so a crash leaves either the old state or the new, never half of one. Every write is
checked: a short write (a nearly full disk) or any error keeps the old file, removes the temporary
one, and is reported (`save_problem`, `save_failures`, a log line) before the OSError propagates.
A file that cannot be read is moved aside (never deleted) and reported; the router then starts
from the YAML.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

log = logging.getLogger("router.control.state")


class StateStore:
    """A JSON document in `state_dir/NAME`, loaded once and saved whole."""

    def __init__(self, state_dir: Path, name: str = "state.json") -> None:
        self.dir = state_dir
        self.path = state_dir / name
        self.problem: str | None = None  # why the last load fell back to empty state
        self.save_problem: str | None = None  # why the last save failed; None once one succeeds
        self.save_failures = 0

    def load(self) -> dict[str, Any]:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {}
        except (OSError, UnicodeDecodeError) as exc:
            return self._unusable(f"cannot read: {exc}")
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            return self._unusable(f"not valid JSON: {exc}")
        if not isinstance(data, dict):
            return self._unusable("top level is not a JSON object")
        return data

    def _unusable(self, why: str) -> dict[str, Any]:
        aside = self.path.with_name(f"{self.path.name}.corrupt-{int(time.time())}")
        try:
            os.replace(self.path, aside)
            where = f"moved aside to {aside}"
        except OSError as exc:
            where = f"could not move it aside: {exc}"
        self.problem = f"state file {self.path}: {why}; {where}; starting from the YAML"
        log.error("%s", self.problem)
        return {}

    def save(self, data: dict[str, Any]) -> None:
        """Replace the file with `data`, or keep the old file and raise OSError."""
        payload = json.dumps(data, indent=2, sort_keys=True).encode()
        try:
            self._replace(payload)
        except OSError as exc:
            self.save_failures += 1
            self.save_problem = f"cannot save {self.path} ({exc}); the previous file is kept"
            log.error("%s", self.save_problem)
            raise
        self.save_problem = None
        self._sync_dir()

    def _replace(self, payload: bytes) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                write_all(fd, payload)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def _sync_dir(self) -> None:
        """Make the rename durable; the new file is in place either way, so failing here is only logged."""
        try:
            dir_fd = os.open(self.dir, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError as exc:
            log.warning("saved %s but could not fsync its directory: %s", self.path, exc)


def write_all(fd: int, data: bytes) -> None:
    """os.write until every byte is written: a full disk or a file size limit can cut a write short."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        if written <= 0:
            raise OSError(errno.ENOSPC, "no byte written")
        view = view[written:]
