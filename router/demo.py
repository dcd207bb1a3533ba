"""`make demo`: two example models behind the router, some traffic, and where to look.

Starts `backends.model_server` twice (fraud v1 on 9001, v2 on 9002), the router on
config/demo.yaml (8080, admin 9901), sends a few hundred predictions from a handful of users,
prints what happened, and keeps everything running until Ctrl-C.
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


def shifted_config(offset: int) -> Path:
    """config/demo.yaml with every port moved by `offset` (so the demo can run beside others)."""
    text = DEMO_CONFIG.read_text()
    if offset:
        text = re.sub(r"127\.0\.0\.1:(\d+)", lambda m: f"127.0.0.1:{int(m.group(1)) + offset}", text)
        text = text.replace("state_dir: var/demo", f"state_dir: {tempfile.mkdtemp(prefix='router-demo-')}")
    path = Path(tempfile.mkdtemp(prefix="router-demo-")) / "demo.yaml"
    path.write_text(text)
    return path


def ports_in(config: Path) -> list[int]:
    return [int(p) for p in re.findall(r"127\.0\.0\.1:(\d+)", config.read_text())]


def busy(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


class Demo:
    """The processes the demo starts, stopped in reverse order."""

    def __init__(self, config: Path) -> None:
        self.config = config
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []
        ports = ports_in(config)
        self.router_port, self.admin_port, self.v1_port, self.v2_port = ports[0], ports[1], ports[2], ports[3]

    def start(self, name: str, args: list[str], env: dict[str, str] | None = None) -> None:
        proc = subprocess.Popen([sys.executable, *args], cwd=ROOT, env={**os.environ, **(env or {})},
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.procs.append((name, proc))

    def stop(self) -> None:
        for _, proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for name, proc in reversed(self.procs):
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                print(f"  {name} did not stop; killing it")
                proc.kill()

    async def wait_ready(self, url: str, name: str) -> None:
        async with aiohttp.ClientSession() as s:
            for _ in range(200):
                for pname, proc in self.procs:
                    if proc.poll() is not None:
                        err = proc.stderr.read().decode() if proc.stderr else ""
                        raise SystemExit(f"demo: {pname} exited with {proc.returncode}:\n{err}")
                with contextlib.suppress(aiohttp.ClientError):
                    async with s.get(url) as r:
                        if r.status == 200:
                            return
                await asyncio.sleep(0.05)
        raise SystemExit(f"demo: {name} did not become ready at {url}")


async def traffic(base: str, requests: int) -> dict[str, Any]:
    rng = random.Random(42)
    users = [f"user-{i}" for i in range(20)]
    by_backend: dict[str, int] = {}
    by_user: dict[str, set[str]] = {}
    failures = 0
    async with aiohttp.ClientSession() as s:
        for i in range(requests):
            user = rng.choice(users)
            body = {"instances": [[rng.gauss(0, 1) for _ in range(4)]]}
            async with s.post(f"{base}/v1/models/fraud:predict", json=body, headers={"X-User-Id": user}) as r:
                await r.read()
                backend = r.headers.get("X-Model-Backend", "?")
                failures += r.status != 200
            by_backend[backend] = by_backend.get(backend, 0) + 1
            by_user.setdefault(user, set()).add(backend)
            if (i + 1) % 25 == 0 or i + 1 == requests:
                bar = "#" * ((i + 1) * 40 // requests)
                print(f"\r  traffic [{bar:<40}] {i + 1}/{requests}", end="", flush=True)
    print()
    return {"by_backend": by_backend, "sticky": all(len(b) == 1 for b in by_user.values()),
            "users": len(by_user), "failures": failures}


async def run(args: argparse.Namespace) -> int:
    config = shifted_config(args.port_offset)
    demo = Demo(config)
    taken = [p for p in ports_in(config) if busy(p)]
    if taken:
        print(f"demo: ports {taken} are in use; stop what uses them, or run "
              f"`python -m router.demo --port-offset 100`", file=sys.stderr)
        return 1
    admin = f"http://127.0.0.1:{demo.admin_port}"
    base = f"http://127.0.0.1:{demo.router_port}"
    try:
        print("starting the example models: fraud v1 and fraud v2 (a retrained version that mostly agrees)")
        demo.start("fraud-v1", ["-m", "backends.model_server", "--port", str(demo.v1_port), "--version", "v1"])
        demo.start("fraud-v2", ["-m", "backends.model_server", "--port", str(demo.v2_port), "--version", "v2"])
        await demo.wait_ready(f"http://127.0.0.1:{demo.v1_port}/health", "fraud-v1")
        await demo.wait_ready(f"http://127.0.0.1:{demo.v2_port}/health", "fraud-v2")
        print(f"starting the router on {config.name}: canary 20% sticky by X-User-Id, v2 also shadowed")
        demo.start("router", ["-m", "router", "serve", "--config", str(config), "--log-level", "warning"],
                   env={"ROUTER_ADMIN_TOKEN": os.environ.get("ROUTER_ADMIN_TOKEN", TOKEN)})
        await demo.wait_ready(admin + "/-/healthz", "router")
        started = time.perf_counter()
        result = await traffic(base, args.requests)
        elapsed = time.perf_counter() - started
        await asyncio.sleep(0.3)  # let the last shadow comparisons land
        async with aiohttp.ClientSession() as s, s.get(admin + "/-/routes/fraud/shadow") as r:
            shadow = await r.json()
        print_summary(result, shadow, elapsed, args.requests)
        print_where_to_look(base, admin)
        if result["failures"]:
            print(f"demo: {result['failures']} requests failed", file=sys.stderr)
            return 1
        if args.no_wait:
            return 0
        print("\nserving until Ctrl-C ...")
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        return 0
    finally:
        print("stopping")
        demo.stop()


def print_summary(result: dict[str, Any], shadow: dict[str, Any], elapsed: float, requests: int) -> None:
    print(f"\n{requests} predictions in {elapsed:.1f}s, {result['failures']} failed")
    for backend, n in sorted(result["by_backend"].items()):
        print(f"  {backend:<10} {n:>5} ({100 * n / requests:.0f}%)")
    print(f"  sticky: each of {result['users']} users always got the same model: {result['sticky']}")
    agreement, labels = shadow.get("agreement", {}), shadow.get("label_agreement") or {}
    if agreement.get("n"):
        print(f"  shadow: {shadow['compared']} comparisons of v2 with v1: label agreement "
              f"{100 * (labels.get('rate') or 0):.1f}% (95% CI {100 * (labels.get('low') or 0):.1f}"
              f"..{100 * (labels.get('high') or 0):.1f}%), exact output agreement {100 * agreement['rate']:.1f}%")


def print_where_to_look(base: str, admin: str) -> None:
    print(f"""
where to look:
  predictions   curl -s -X POST {base}/v1/models/fraud:predict -H 'X-User-Id: alice' \\
                     -d '{{"instances": [[0.1, 0.5, -1.2, 2.0]]}}' -i
  status        curl -s {admin}/-/status | python3 -m json.tool
  assignment    curl -s '{admin}/-/routes/fraud/assign?key=alice'
  shadow        curl -s {admin}/-/routes/fraud/shadow | python3 -m json.tool
  differences   curl -s {admin}/-/routes/fraud/diffs?limit=3 | python3 -m json.tool
  metrics       curl -s {admin}/metrics | grep ^router_
  change split  curl -s -X POST -H 'Authorization: Bearer {os.environ.get("ROUTER_ADMIN_TOKEN", TOKEN)}' \\
                     -d '{{"candidate_percent": 50}}' {admin}/-/routes/fraud/split""")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m router.demo", description=__doc__)
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--no-wait", action="store_true", help="stop after the traffic instead of serving on")
    parser.add_argument("--port-offset", type=int, default=0, help="move every demo port by this much")
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        return asyncio.run(run(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
