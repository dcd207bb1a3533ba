"""`make demo`: the whole story in about a minute.

Starts four example models (fraud v1 and a good v2; churn v1 and a bad v2), the router on
config/demo.yaml, and a traffic generator. Both candidates go through an automatic rollout:
shadowing, canary steps, then promotion for the good one and rollback (with the reason) for the
bad one. Every phase change is printed as it happens, during the story and after it; then the
router keeps serving, with the status page's address shown, until Ctrl-C.

The router runs on config/demo.yaml itself (or `--config FILE`), so editing that file and sending
the router SIGHUP reloads it, as the README says. Only `--port-offset` needs a copy with the ports
moved: it lives in a temporary directory that is removed on exit.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from router.control.steps import step_label

ROOT = Path(__file__).resolve().parent.parent
DEMO_CONFIG = ROOT / "config" / "demo.yaml"
TOKEN = "demo-token"
MODELS = [("fraud-v1", "fraud", ["--version", "v1"]), ("fraud-v2", "fraud", ["--version", "v2"]),
          ("churn-v1", "churn", ["--version", "v1"]), ("churn-v2", "churn", ["--version", "v2", "--perturb", "3"])]
TERMINAL = {"promoted", "rolled_back", "paused", "completed"}
STATE_FILES = ("rollouts.json", "decisions.jsonl", "state.json")  # what the router keeps in state_dir


def moved_config(source: Path, offset: int, work: Path) -> Path:
    """A copy of `source` in `work` with every port moved by `offset` and its state inside `work`."""
    text = re.sub(r"127\.0\.0\.1:(\d+)", lambda m: f"127.0.0.1:{int(m.group(1)) + offset}", source.read_text())
    text = re.sub(r"(?m)^state_dir: .*$", f"state_dir: {work / 'state'}", text)
    path = work / source.name
    path.write_text(text)
    return path


def fresh_state(config: Path) -> None:
    """The story starts from the first step: forget the rollouts of an earlier run (the demo's own files only)."""
    found = re.search(r"(?m)^state_dir: *(\S+)", config.read_text())
    state_dir = ROOT / (found.group(1) if found else "var/router")
    for name in STATE_FILES:
        (state_dir / name).unlink(missing_ok=True)


def python_command() -> str:
    """How to run this Python from the repository root, as the user would type it."""
    exe = Path(sys.executable)
    with contextlib.suppress(ValueError):
        return str(exe.relative_to(ROOT))
    return str(exe)


def ports_in(config: Path) -> list[int]:
    return [int(p) for p in re.findall(r"127\.0\.0\.1:(\d+)", config.read_text())]


def busy(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


class Processes:
    """What the demo starts, stopped in reverse order."""

    def __init__(self) -> None:
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(self, name: str, args: list[str], env: dict[str, str] | None = None) -> None:
        proc = subprocess.Popen([sys.executable, *args], cwd=ROOT, env={**os.environ, **(env or {})},
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.procs.append((name, proc))

    def pid(self, name: str) -> int:
        return next(proc.pid for n, proc in self.procs if n == name)

    def check(self) -> None:
        for name, proc in self.procs:
            if proc.poll() is not None:
                err = proc.stderr.read().decode() if proc.stderr else ""
                raise SystemExit(f"demo: {name} exited with {proc.returncode}:\n{err}")

    def stop(self) -> None:
        for _, proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for _, proc in reversed(self.procs):
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()

    async def wait_ready(self, url: str) -> None:
        async with aiohttp.ClientSession() as s:
            for _ in range(300):
                self.check()
                with contextlib.suppress(aiohttp.ClientError):
                    async with s.get(url) as r:
                        if r.status == 200:
                            return
                await asyncio.sleep(0.05)
        raise SystemExit(f"demo: nothing answered at {url}")


class Traffic:
    """Predictions from a few hundred users on both routes, until told to stop."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.sent = 0
        self.failed = 0
        self.by_backend: dict[str, int] = {}
        self.stop = asyncio.Event()

    async def run(self, workers: int = 8) -> None:
        async with aiohttp.ClientSession() as s:
            await asyncio.gather(*(self._worker(s, random.Random(i)) for i in range(workers)))

    async def _worker(self, s: aiohttp.ClientSession, rng: random.Random) -> None:
        while not self.stop.is_set():
            model = rng.choice(("fraud", "churn"))
            body = {"instances": [[rng.gauss(0, 1) for _ in range(4)]]}
            headers = {"X-User-Id": f"user-{rng.randrange(300)}"}
            try:
                async with s.post(f"{self.base}/v1/models/{model}:predict", json=body, headers=headers) as r:
                    await r.read()
                    backend = r.headers.get("X-Model-Backend", "?")
                    self.failed += r.status != 200
            except aiohttp.ClientError:
                self.failed += 1
                backend = "error"
            self.sent += 1
            self.by_backend[backend] = self.by_backend.get(backend, 0) + 1


class Watcher:
    """Prints every rollout phase change as it happens, during the story and after it."""

    def __init__(self, admin: str, traffic: Traffic) -> None:
        self.admin = admin
        self.traffic = traffic
        self.tty = sys.stdout.isatty()  # progress on one rewritten line only on a terminal
        self.seen: dict[str, tuple[str, int]] = {}
        self.final: dict[str, dict[str, Any]] = {}
        self.started = time.monotonic()
        self.last_progress = 0.0

    async def story(self, limit_s: float) -> dict[str, dict[str, Any]]:
        """Return when both rollouts have ended (or after `limit_s`)."""
        async with aiohttp.ClientSession() as s:
            while time.monotonic() - self.started < limit_s:
                await self.look(s)
                if all(self.final.get(r, {}).get("phase") in TERMINAL for r in ("fraud", "churn")):
                    break
                await asyncio.sleep(0.25)
        if self.tty:
            print()
        return self.final

    async def follow(self, stop: asyncio.Event) -> None:
        """After the story: an operator's restart, a reload, a new rollout are still told."""
        async with aiohttp.ClientSession() as s:
            while not stop.is_set():
                with contextlib.suppress(aiohttp.ClientError):
                    await self.look(s, progress=False)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 0.5)

    async def look(self, s: aiohttp.ClientSession, progress: bool = True) -> None:
        for route in ("fraud", "churn"):
            async with s.get(f"{self.admin}/-/routes/{route}/rollout?tail=1") as r:
                info = await r.json()
            if r.status != 200:
                continue  # the YAML no longer has this rollout
            where = (info["phase"], info["step_index"])
            if self.seen.get(route) != where:
                self.seen[route] = where
                self.say(phase_line(route, info, time.monotonic() - self.started))
            self.final[route] = info
        if progress:
            self.progress()

    def say(self, line: str) -> None:
        print(f"\r{line:<78}" if self.tty else line, flush=True)

    def progress(self) -> None:
        text = f"  traffic: {self.traffic.sent} predictions, {self.traffic.failed} failed"
        if self.tty:
            print(f"\r{text}", end="", flush=True)
        elif time.monotonic() - self.last_progress >= 10:
            self.last_progress = time.monotonic()
            print(text, flush=True)


def phase_line(route: str, info: dict[str, Any], at: float) -> str:
    reason = info["last_decision"].get("reason", "")
    if info["phase"] == "completed":
        return f"{at:5.1f}s  {route:<6} {'completed':<12} {info['primary']} is the primary  - {reason}"
    where = step_label(info["step_index"], info["steps"])
    told = info["phase"] in TERMINAL or info["step_index"]
    return (f"{at:5.1f}s  {route:<6} {info['phase']:<12} {where}, {info['candidate_percent']:g}% to "
            f"{info['candidate']}{'  - ' + reason if told else ''}")


def free_offset(ports: list[int]) -> int:
    """A port offset at which every demo port is free, for the hint."""
    for offset in range(100, 20000, 100):
        if not any(busy(p + offset) for p in ports):
            return offset
    return 100


async def run(args: argparse.Namespace) -> int:
    source = Path(args.config)
    work: Path | None = None
    main = asyncio.current_task()
    assert main is not None
    # Until the story ends, SIGTERM unwinds like Ctrl-C: the processes stop and the copy is removed.
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, main.cancel)
    try:
        if args.port_offset:
            work = Path(tempfile.mkdtemp(prefix="router-demo-"))
            config = moved_config(source, args.port_offset, work)
        else:
            config = source
            fresh_state(config)
        return await story(args, config)
    finally:
        if work is not None:
            shutil.rmtree(work, ignore_errors=True)


async def story(args: argparse.Namespace, config: Path) -> int:
    ports = ports_in(config)
    taken = [p for p in ports if busy(p)]
    if taken:
        print(f"demo: ports {taken} are in use; stop what uses them, or move every demo port with\n"
              f"  {python_command()} -m examples.demo --port-offset {free_offset(ports)}", file=sys.stderr)
        return 1
    base, admin = f"http://127.0.0.1:{ports[0]}", f"http://127.0.0.1:{ports[1]}"
    procs = Processes()
    try:
        print("starting 4 example models: fraud v1 + v2 (good candidate), churn v1 + v2 (bad candidate)")
        for (name, model, extra), port in zip(MODELS, ports[2:6], strict=True):
            procs.start(name, ["-m", "backends.model_server", "--port", str(port), "--name", model, *extra])
        for port in ports[2:6]:
            await procs.wait_ready(f"http://127.0.0.1:{port}/health")
        shown = config.relative_to(ROOT) if config.is_relative_to(ROOT) else config
        print(f"starting the router on {shown} (data {base}, admin {admin})")
        token = os.environ.get("ROUTER_ADMIN_TOKEN", TOKEN)
        procs.start("router", ["-m", "router", "serve", "--config", str(config), "--log-level", "error"],
                    env={"ROUTER_ADMIN_TOKEN": token})
        await procs.wait_ready(admin + "/-/healthz")
        print("sending traffic; both candidates start in shadow, then take 10%, 50%, 100% if the evidence holds\n")
        traffic = Traffic(base)
        sender = asyncio.create_task(traffic.run())
        watcher = Watcher(admin, traffic)
        final = await watcher.story(args.limit)
        if args.no_wait:
            traffic.stop.set()
        print_summary(final, traffic)
        print_where_to_look(base, admin, token, shown, procs.pid("router"))
        if args.no_wait:
            await sender
            return 0 if traffic.failed == 0 else 1
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):  # from now on a signal ends the demo in order
            asyncio.get_running_loop().add_signal_handler(sig, stop.set)
        print("\nserving (with traffic) until Ctrl-C; phase changes are still shown ...", flush=True)
        await watcher.follow(stop)
        traffic.stop.set()
        await sender
        return 0
    finally:
        print("stopping")
        procs.stop()


def print_summary(final: dict[str, dict[str, Any]], traffic: Traffic) -> None:
    print(f"\n{traffic.sent} predictions, {traffic.failed} failed")
    for backend, n in sorted(traffic.by_backend.items()):
        print(f"  {backend:<10} {n:>6}")
    for route, info in final.items():
        print(f"  {route}: {info['phase']} - {info['last_decision'].get('reason', '')}")


def print_where_to_look(base: str, admin: str, token: str, config: Path, pid: int) -> None:
    print(f"""
where to look:
  status page   {admin}/
  status        .venv/bin/model-router status --admin {admin.removeprefix('http://')}
  rollout log   curl -s {admin}/-/routes/churn/rollout | python3 -m json.tool
  shadow        curl -s {admin}/-/routes/fraud/shadow | python3 -m json.tool
  differences   curl -s '{admin}/-/routes/churn/diffs?limit=3' | python3 -m json.tool
  metrics       curl -s {admin}/metrics | grep ^router_rollout
  predict       curl -s -X POST {base}/v1/models/fraud:predict -H 'X-User-Id: alice' \\
                     -d '{{"instances": [[0.1, 0.5, -1.2, 2.0]]}}' -i
  operate       ROUTER_ADMIN_TOKEN={token} .venv/bin/model-router restart churn --admin {admin.removeprefix('http://')}
  reload        edit {config}, then: kill -HUP {pid}""", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m examples.demo", description=__doc__)
    parser.add_argument("--no-wait", action="store_true", help="stop when both rollouts have ended")
    parser.add_argument("--config", default=str(DEMO_CONFIG), metavar="FILE",
                        help="the routing file the router runs on (default config/demo.yaml)")
    parser.add_argument("--port-offset", type=int, default=0, help="move every demo port by this much")
    parser.add_argument("--limit", type=float, default=120.0, help="give up on the rollouts after this many seconds")
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt, asyncio.CancelledError):
        return asyncio.run(run(args))
    return 1


if __name__ == "__main__":
    raise SystemExit(main())
