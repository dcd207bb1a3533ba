"""One worker process: `python -m router.workers.worker --config FILE --index I --admin-socket PATH`.

Started by the supervisor only. It serves the data port with SO_REUSEPORT next to its siblings,
and its admin API on a private unix socket that the supervisor's admin listener aggregates.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys

from router.app import WorkerSlot, check_parsers, serve
from router.config import ConfigError, load_config


async def _orphan_guard(parent: int) -> None:
    """A worker whose supervisor died (even by SIGKILL) drains and exits instead of lingering."""
    while os.getppid() == parent:
        await asyncio.sleep(1.0)
    os.kill(os.getpid(), signal.SIGTERM)


async def _run(config_path: str, slot: WorkerSlot, parent: int) -> None:
    config = load_config(config_path)
    guard = asyncio.get_running_loop().create_task(_orphan_guard(parent))
    try:
        await serve(config, config_path, ready_message=False, worker=slot)
    finally:
        guard.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await guard


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="router.workers.worker")
    p.add_argument("--config", required=True)
    p.add_argument("--index", type=int, required=True)
    p.add_argument("--admin-socket", required=True)
    p.add_argument("--parent", type=int, required=True)
    p.add_argument("--log-level", default="warning")
    args = p.parse_args(argv)
    logging.basicConfig(level=getattr(logging, args.log_level.upper()),
                        format=f"%(asctime)s %(levelname)s %(name)s[worker {args.index}]: %(message)s")
    problem = check_parsers()
    if problem:
        print(f"model-router worker {args.index}: {problem}", file=sys.stderr)
        return 1
    import uvloop

    try:
        uvloop.run(_run(args.config, WorkerSlot(args.index, args.admin_socket), args.parent))
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"model-router worker {args.index}: cannot start: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
