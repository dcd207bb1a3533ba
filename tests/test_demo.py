"""`make demo` runs the whole story end to end (here without waiting for Ctrl-C)."""

from __future__ import annotations

import random
import re
import socket
import subprocess
import sys

from tests.helpers import ROOT

DEMO_PORTS = (8080, 9901, 9001, 9002, 9003, 9004)


def free_offset() -> int:
    rng = random.Random()
    for _ in range(50):
        offset = rng.randrange(2000, 20000)
        sockets = [socket.socket() for _ in DEMO_PORTS]
        try:
            for s, p in zip(sockets, DEMO_PORTS, strict=True):
                s.bind(("127.0.0.1", p + offset))
        except OSError:
            continue
        finally:
            for s in sockets:
                s.close()
        return offset
    raise AssertionError("no free port range")


def test_demo_promotes_the_good_candidate_and_rolls_back_the_bad() -> None:
    result = subprocess.run([sys.executable, "-m", "router.demo", "--no-wait", "--limit", "100",
                             "--port-offset", str(free_offset())], cwd=ROOT, capture_output=True, text=True,
                            timeout=150)
    out = result.stdout.replace("\r", "\n")
    assert result.returncode == 0, out + result.stderr
    assert re.search(r"fraud\s+progressing\s+step 1 \(10% to fraud-v2\)", out)
    assert re.search(r"fraud\s+promoted\s+step 3 \(100% to fraud-v2\)", out)
    assert re.search(r"churn\s+rolled_back .*agreement fail", out)
    assert re.search(r"\d+ predictions, 0 failed", out)
    assert "churn: rolled_back - failed at step 0" in out
    assert "status page   http://127.0.0.1:" in out and "stopping" in out
