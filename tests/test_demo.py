"""`make demo` runs the whole story end to end (here without waiting for Ctrl-C)."""

from __future__ import annotations

import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from examples.demo import moved_config
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
    result = subprocess.run([sys.executable, "-m", "examples.demo", "--no-wait", "--limit", "100",
                             "--port-offset", str(free_offset())], cwd=ROOT, capture_output=True, text=True,
                            timeout=150)
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert "\r" not in out, "output to a pipe must be whole lines"
    assert re.search(r"fraud\s+progressing\s+step 2 of 4 \(10%\), 10% to fraud-v2", out)
    assert re.search(r"fraud\s+promoted\s+step 4 of 4 \(100%\), 100% to fraud-v2", out)
    assert re.search(r"churn\s+rolled_back .*agreement fail", out)
    assert re.search(r"\d+ predictions, 0 failed", out)
    assert "churn: rolled_back - failed at step 1 of 4 (0%)" in out
    assert "most disagreeing fields: $.predictions[*].label" in out
    assert "status page   http://127.0.0.1:" in out and "stopping" in out
    copy = re.search(r"starting the router on (\S+)", out)
    assert copy and "router-demo-" in copy.group(1), out
    assert not Path(copy.group(1)).parent.exists(), "the demo must remove its temporary directory"


def test_demo_port_conflict_hint_gives_a_working_command(tmp_path: Path) -> None:
    config = moved_config(ROOT / "config" / "demo.yaml", free_offset(), tmp_path)
    host_port = re.search(r"listen: 127\.0\.0\.1:(\d+)", config.read_text())
    assert host_port
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", int(host_port.group(1))))
        blocker.listen()
        result = subprocess.run([sys.executable, "-m", "examples.demo", "--no-wait", "--config", str(config)],
                                cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    command = re.search(r"\n  (\S+) -m examples\.demo --port-offset (\d+)", result.stderr)
    assert command, result.stderr
    assert (ROOT / command.group(1)).exists() or Path(command.group(1)).exists(), command.group(1)


def test_demo_runs_on_its_file_so_edit_and_sighup_reload_it(tmp_path: Path) -> None:
    """The router runs on the file itself; after the story, a reload that finalizes fraud's
    promotion is still told (the rollout is complete, not a new rollout of fraud-v1)."""
    config = moved_config(ROOT / "config" / "demo.yaml", free_offset(), tmp_path)
    demo = subprocess.Popen([sys.executable, "-m", "examples.demo", "--limit", "100", "--config", str(config)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(demo.stdout.readline, "")), daemon=True)  # type: ignore[union-attr]
    reader.start()

    def wait_for(pattern: str, timeout: float) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(lines):
                if found := re.search(pattern, line):
                    return found
            assert demo.poll() is None, "".join(lines)
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {pattern!r} in:\n{''.join(lines)}")

    try:
        pid = int(wait_for(r"kill -HUP (\d+)", 130).group(1))
        wait_for(r"serving \(with traffic\) until Ctrl-C", 10)
        finalize = subprocess.run([sys.executable, "-m", "router", "finalize", "fraud", "--config", str(config),
                                   "--write", "--admin", re.findall(r"127\.0\.0\.1:\d+", config.read_text())[1]],
                                  cwd=ROOT, capture_output=True, text=True, timeout=30)
        assert finalize.returncode == 0, finalize.stdout + finalize.stderr
        os.kill(pid, signal.SIGHUP)
        wait_for(r"fraud\s+completed\s+fraud-v2 is the primary .*the rollout is complete", 20)
    finally:
        demo.send_signal(signal.SIGTERM)
        demo.wait(30)
        reader.join(5)
        demo.stdout.close()  # type: ignore[union-attr]
    assert demo.returncode == 0, "".join(lines)
    assert "stopping" in "".join(lines)
