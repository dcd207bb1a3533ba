"""Start test routers fast: fork each one from a process that has already imported the router.

`python -m router serve` spends most of its start-up importing aiohttp, numpy, redis and the router
(about 0.8 s of CPU, several seconds on a loaded 2-core machine), and the suite starts hundreds of
routers. The zygote (`python -m tests.zygote FD`, one per pytest process) imports `router.cli` and
`router.app` once; for each router it forks a child that runs `router.cli.main([...])` as
`python -m router` would, with the test's environment, working directory and an output pipe. The
child is a real, separate router process (its own pid, signals, exit status, interpreter shutdown);
only the imports are shared. `MODEL_ROUTER_TEST_FORK=0` starts every router with `python -m router`.

Protocol over a SOCK_SEQPACKET socket: a request is JSON {"argv", "env", "cwd"} carrying two fds (the
output pipe's write end and an exit-status pipe's write end); the reply is the child's pid. When the
child exits the zygote writes its exit code (negative: the signal) to the status pipe. When the
socket closes (pytest ended, however), the zygote kills the children it still has and exits.
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import sys
from typing import Any

import router.app  # imported once, before any fork: the point of the zygote
import router.cli

MAX_REQUEST = 1 << 20


def _reap(status_fds: dict[int, int]) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        fd = status_fds.pop(pid, None)
        if fd is not None:
            os.write(fd, f"{os.waitstatus_to_exitcode(status)}\n".encode())
            os.close(fd)


def _child(sock: socket.socket, request: dict[str, Any], out_fd: int) -> list[str]:
    """In the forked child: become the router's process; returns its argv for main()."""
    sock.detach()  # closed below with the other fds; the object must not close a reused fd later
    signal.set_wakeup_fd(-1)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    os.dup2(out_fd, 1)
    os.dup2(out_fd, 2)
    os.closerange(3, os.sysconf("SC_OPEN_MAX"))  # the socket, the other children's status pipes
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    sys.argv = [router.cli.__file__.replace("cli.py", "__main__.py"), *request["argv"]]
    return list(request["argv"])


def serve(sock: socket.socket) -> list[str] | None:
    """The zygote's loop. Returns None when pytest has gone, or a child's argv (in the child)."""
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    status_fds: dict[int, int] = {}
    while True:
        ready, _, _ = select.select([sock.fileno(), wake_r], [], [])
        if wake_r in ready:
            os.read(wake_r, 4096)
            _reap(status_fds)
        if sock.fileno() not in ready:
            continue
        data, fds, _, _ = socket.recv_fds(sock, MAX_REQUEST, 2)
        if not data:
            for pid in status_fds:
                os.kill(pid, signal.SIGKILL)
            return None
        out_fd, status_fd = fds
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            os.close(wake_r)
            os.close(wake_w)
            return _child(sock, json.loads(data), out_fd)
        os.close(out_fd)
        status_fds[pid] = status_fd
        sock.send(str(pid).encode())


def main() -> None:
    sock = socket.socket(fileno=int(sys.argv[1]))
    argv = serve(sock)
    if argv is not None:  # the child: run the router as `python -m router` does, then exit through
        raise SystemExit(router.cli.main(argv))  # the interpreter's normal shutdown


if __name__ == "__main__":
    main()
