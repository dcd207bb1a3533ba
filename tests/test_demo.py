"""`make demo` runs the main job end to end (here without waiting for Ctrl-C)."""

from __future__ import annotations

import random
import re
import socket
import subprocess
import sys

from tests.helpers import ROOT


def free_offset() -> int:
    rng = random.Random()
    for _ in range(50):
        offset = rng.randrange(2000, 20000)
        ports = [8080 + offset, 9901 + offset, 9001 + offset, 9002 + offset]
        with socket.socket() as a, socket.socket() as b, socket.socket() as c, socket.socket() as d:
            try:
                for s, p in zip((a, b, c, d), ports, strict=True):
                    s.bind(("127.0.0.1", p))
            except OSError:
                continue
        return offset
    raise AssertionError("no free port range")


def test_demo_runs_and_reports() -> None:
    result = subprocess.run([sys.executable, "-m", "router.demo", "--no-wait", "--requests", "200",
                             "--port-offset", str(free_offset())], cwd=ROOT, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "200 predictions" in out and ", 0 failed" in out
    assert "always got the same model: True" in out
    shares = dict(re.findall(r"(fraud-v[12])\s+\d+ \((\d+)%\)", out))
    assert set(shares) == {"fraud-v1", "fraud-v2"} and 5 <= int(shares["fraud-v2"]) <= 40
    assert re.search(r"shadow: \d+ comparisons of v2 with v1: label agreement \d", out)
    assert "where to look" in out and "stopping" in out
