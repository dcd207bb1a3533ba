"""What must survive a restart, kept as JSON in `state_dir` and written atomically.

Writes go to a temporary file that is fsynced and renamed over the old one, then the directory
is fsynced, so a crash leaves either the old state or the new, never half of one. A file that
cannot be read is moved aside (never deleted) and reported; the router then starts from the YAML.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

log = logging.getLogger("router.state")


class StateStore:
    """A JSON document in `state_dir/NAME`, loaded once and saved whole."""

    def __init__(self, state_dir: Path, name: str = "state.json") -> None:
        self.dir = state_dir
        self.path = state_dir / name
        self.problem: str | None = None  # why the last load fell back to empty state

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
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        payload = json.dumps(data, indent=2, sort_keys=True).encode()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, payload)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)
        dir_fd = os.open(self.dir, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
