"""The pytest side of tests/zygote.py: start a router process forked from the zygote, or with
`python -m router` when MODEL_ROUTER_TEST_FORK=0, and handle it as a subprocess.Popen."""

from __future__ import annotations

import atexit
import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import IO, Protocol

ROOT = Path(__file__).resolve().parent.parent


class Process(Protocol):
    """What the tests use of a router's process: subprocess.Popen, or a ForkedProcess."""

    pid: int
    returncode: int | None
    stdout: IO[bytes] | None

    def poll(self) -> int | None: ...
    def wait(self, timeout: float | None = None) -> int: ...
    def send_signal(self, sig: int) -> None: ...
    def kill(self) -> None: ...


class ForkedProcess:
    """A router forked by the zygote: the subset of subprocess.Popen that the tests use.

    The zygote is the parent, so the exit code comes through a status pipe instead of waitpid."""

    def __init__(self, args: list[str], pid: int, stdout: IO[bytes], status_fd: int) -> None:
        self.args, self.pid = args, pid
        self.stdout: IO[bytes] | None = stdout
        self.returncode: int | None = None
        self._status_fd: int | None = status_fd

    def _collect(self, timeout: float | None) -> int | None:
        if self.returncode is None and self._status_fd is not None:
            ready, _, _ = select.select([self._status_fd], [], [], timeout)
            if not ready:
                return None
            text = os.read(self._status_fd, 64).decode().strip()
            os.close(self._status_fd)
            self._status_fd = None
            # no code: the zygote died (and killed its children first)
            self.returncode = int(text) if text else -signal.SIGKILL
        return self.returncode

    def poll(self) -> int | None:
        return self._collect(0)

    def wait(self, timeout: float | None = None) -> int:
        code = self._collect(timeout)
        if code is None:
            raise subprocess.TimeoutExpired(self.args, timeout or 0)
        return code

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)


class Zygote:
    """One per pytest process, started at the first router; it ends when this process's socket closes."""

    def __init__(self) -> None:
        self.sock, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.zygote", str(theirs.fileno())], cwd=ROOT,
                                     pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL)
        theirs.close()
        self.lock = threading.Lock()  # requests come from the event loop and from to_thread helpers

    def start(self, argv: list[str], env: dict[str, str]) -> ForkedProcess:
        out_r, out_w = os.pipe()
        status_r, status_w = os.pipe()
        request = json.dumps({"argv": argv, "env": env, "cwd": str(ROOT)}).encode()
        try:
            with self.lock:
                socket.send_fds(self.sock, [request], [out_w, status_w])
                reply = self.sock.recv(64)
        finally:
            os.close(out_w)
            os.close(status_w)
        if not reply:
            os.close(out_r)
            os.close(status_r)
            raise RuntimeError(f"the router zygote has exited ({self.proc.poll()})")
        return ForkedProcess(["router", *argv], int(reply), os.fdopen(out_r, "rb"), status_r)

    def close(self) -> None:
        self.sock.close()
        self.proc.wait(10)


_zygote: Zygote | None = None
_zygote_lock = threading.Lock()  # netkit starts routers from threads of its own


def start_router_process(argv: list[str], env: dict[str, str]) -> Process:
    """`python -m router ARGV` with `env`, stdout and stderr into one pipe, as a Popen-like process."""
    global _zygote
    if os.environ.get("MODEL_ROUTER_TEST_FORK", "1") == "0":
        return subprocess.Popen([sys.executable, "-m", "router", *argv], cwd=ROOT, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    with _zygote_lock:
        if _zygote is None or _zygote.proc.poll() is not None:
            _zygote = Zygote()
            atexit.register(_zygote.close)
        zygote = _zygote
    return zygote.start(argv, env)
