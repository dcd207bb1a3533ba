"""Config scale: a routing file with 1,000 routes and 1,000 backends validates and reloads fast.

    .venv/bin/python bench/scale.py [--routes 1000]

Prints: parse + validate + table build in-process, `model-router validate` end to end (with the
Python start-up), and `POST /-/reload` on a running router (parse in a worker thread, build the
new runtime, swap), each the median of several runs with the worst beside it. The data-path cost
of 1,000 prefix routes is the `router-1k-routes` row of bench/run.py.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from router.config import parse_config  # noqa: E402
from router.dataplane.table import RoutingTable  # noqa: E402

TOKEN = "bench-token"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def big_config(n: int, state_dir: Path, port: int, admin: int) -> str:
    backends = {f"model-{i}": {"url": f"http://127.0.0.1:{20000 + i}"} for i in range(n)}
    routes = [{"name": f"route-{i}", "match": {"path_prefix": f"/v1/models/model-{i}"}, "primary": f"model-{i}",
               "candidate": f"model-{(i + 1) % n}", "split": {"candidate_percent": 5, "sticky": "header:X-User-Id"}}
              for i in range(n)]
    return yaml.safe_dump({"listen": f"127.0.0.1:{port}", "admin": {"listen": f"127.0.0.1:{admin}"},
                           "state_dir": str(state_dir), "backends": backends, "routes": routes}, sort_keys=False)


def timed(fn: object, runs: int) -> tuple[float, float]:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()  # type: ignore[operator]
        times.append(time.perf_counter() - start)
    return statistics.median(times), max(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--routes", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        port, admin = free_port(), free_port()
        path = Path(tmp) / "big.yaml"
        text = big_config(args.routes, Path(tmp) / "state", port, admin)
        path.write_text(text)
        parse = timed(lambda: RoutingTable(parse_config(text, str(path))), args.runs)
        cli = timed(lambda: subprocess.run([sys.executable, "-m", "router", "validate", str(path)], cwd=ROOT,
                                           check=True, capture_output=True), args.runs)
        env = {**os.environ, "ROUTER_ADMIN_TOKEN": TOKEN}
        proc = subprocess.Popen([sys.executable, "-m", "router", "serve", "--config", str(path), "--log-level",
                                 "error"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            for _ in range(200):
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{admin}/-/healthz", timeout=1).close()
                    break
                except OSError:
                    time.sleep(0.05)

            def reload() -> None:
                req = urllib.request.Request(f"http://127.0.0.1:{admin}/-/reload", method="POST",
                                             headers={"Authorization": f"Bearer {TOKEN}"})
                with urllib.request.urlopen(req, timeout=30) as resp:
                    assert resp.status == 200

            reloads = timed(reload, args.runs)
        finally:
            proc.terminate()
            proc.wait(20)
    n = args.routes
    print(f"config scale: {n} routes, {n} backends ({len(text) // 1024} KiB of YAML), median (worst) of {args.runs}")
    print(f"  parse + validate + index, in process   {parse[0] * 1e3:8.1f} ms ({parse[1] * 1e3:.1f})")
    print(f"  `model-router validate`, whole command  {cli[0] * 1e3:8.1f} ms ({cli[1] * 1e3:.1f})")
    print(f"  POST /-/reload on a running router      {reloads[0] * 1e3:8.1f} ms ({reloads[1] * 1e3:.1f})")
    worst = max(parse[1], reloads[1])
    print(f"target: validate and reload well under a second: {'ok' if worst < 1.0 else 'MISSED'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
