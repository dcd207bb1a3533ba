"""`make demo`: the whole story in about a minute.

Starts four example models (fraud v1 and a good v2; churn v1 and a bad v2), the router on
config/demo.yaml, and a traffic generator. Both candidates go through an automatic rollout:
shadowing, canary steps, then promotion for the good one and rollback (with the reason) for the
bad one. Every phase change is printed as it happens; then the router keeps serving, with the
status page's address shown, until Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
DEMO_CONFIG = ROOT / "config" / "demo.yaml"
TOKEN = "demo-token"
MODELS = [("fraud-v1", "fraud", ["--version", "v1"]), ("fraud-v2", "fraud", ["--version", "v2"]),
          ("churn-v1", "churn", ["--version", "v1"]), ("churn-v2", "churn", ["--version", "v2", "--perturb", "3"])]
TERMINAL = {"promoted", "rolled_back", "paused"}


def demo_config(offset: int) -> Path:
    """config/demo.yaml with every port moved by `offset` and a fresh state directory."""
    text = re.sub(r"127\.0\.0\.1:(\d+)", lambda m: f"127.0.0.1:{int(m.group(1)) + offset}", DEMO_CONFIG.read_text())
    work = Path(tempfile.mkdtemp(prefix="router-demo-"))
    text = text.replace("state_dir: var/demo", f"state_dir: {work / 'state'}")
    path = work / "demo.yaml"
    path.write_text(text)
    return path


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


async def watch(admin: str, traffic: Traffic, limit_s: float) -> dict[str, dict[str, Any]]:
    """Print every rollout phase change as it happens; return when both rollouts have ended."""
    seen: dict[str, tuple[str, int]] = {}
    final: dict[str, dict[str, Any]] = {}
    started = time.monotonic()
    async with aiohttp.ClientSession() as s:
        while time.monotonic() - started < limit_s:
            for route in ("fraud", "churn"):
                async with s.get(f"{admin}/-/routes/{route}/rollout?tail=1") as r:
                    info = await r.json()
                where = (info["phase"], info["step_index"])
                if seen.get(route) != where:
                    seen[route] = where
                    reason = info["last_decision"].get("reason", "")
                    line = (f"{time.monotonic() - started:5.1f}s  {route:<6} {info['phase']:<12} step "
                            f"{info['step_index']} ({info['candidate_percent']:g}% to {info['candidate']})"
                            f"{'  - ' + reason if info['phase'] in TERMINAL or info['step_index'] else ''}")
                    print(f"\r{line:<78}")
                final[route] = info
            print(f"\r  traffic: {traffic.sent} predictions, {traffic.failed} failed", end="", flush=True)
            if all(final.get(r, {}).get("phase") in TERMINAL for r in ("fraud", "churn")):
                break
            await asyncio.sleep(0.25)
    print()
    return final


async def run(args: argparse.Namespace) -> int:
    config = demo_config(args.port_offset)
    ports = ports_in(config)
    taken = [p for p in ports if busy(p)]
    if taken:
        print(f"demo: ports {taken} are in use; stop what uses them, or run `python -m router.demo --port-offset 100`",
              file=sys.stderr)
        return 1
    base, admin = f"http://127.0.0.1:{ports[0]}", f"http://127.0.0.1:{ports[1]}"
    procs = Processes()
    try:
        print("starting 4 example models: fraud v1 + v2 (good candidate), churn v1 + v2 (bad candidate)")
        for (name, model, extra), port in zip(MODELS, ports[2:6], strict=True):
            procs.start(name, ["-m", "backends.model_server", "--port", str(port), "--name", model, *extra])
        for port in ports[2:6]:
            await procs.wait_ready(f"http://127.0.0.1:{port}/health")
        print(f"starting the router on config/demo.yaml (data {base}, admin {admin})")
        token = os.environ.get("ROUTER_ADMIN_TOKEN", TOKEN)
        procs.start("router", ["-m", "router", "serve", "--config", str(config), "--log-level", "error"],
                    env={"ROUTER_ADMIN_TOKEN": token})
        await procs.wait_ready(admin + "/-/healthz")
        print("sending traffic; both candidates start in shadow, then take 10%, 50%, 100% if the evidence holds\n")
        traffic = Traffic(base)
        sender = asyncio.create_task(traffic.run())
        final = await watch(admin, traffic, args.limit)
        if args.no_wait:
            traffic.stop.set()
        print_summary(final, traffic)
        print_where_to_look(base, admin, token)
        if args.no_wait:
            await sender
            return 0 if traffic.failed == 0 else 1
        print("\nserving (with traffic) until Ctrl-C ...")
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
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


def print_where_to_look(base: str, admin: str, token: str) -> None:
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
  operate       ROUTER_ADMIN_TOKEN={token} .venv/bin/model-router restart churn --admin {admin.removeprefix('http://')}""")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m router.demo", description=__doc__)
    parser.add_argument("--no-wait", action="store_true", help="stop when both rollouts have ended")
    parser.add_argument("--port-offset", type=int, default=0, help="move every demo port by this much")
    parser.add_argument("--limit", type=float, default=120.0, help="give up on the rollouts after this many seconds")
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        return asyncio.run(run(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
