"""The decision log stays bounded (rotated by size, a fixed number of files kept), and the admin
API's view of it reads only its end, whatever its size."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import aiohttp

from router.control.decisionlog import KEEP, MAX_BYTES, SCAN_BYTES
from tests.helpers import TOKEN, RouterFactory, RouterProcess, base_config, free_port

AUTH = {"Authorization": f"Bearer {TOKEN}"}
BIG = 100 * 1024 * 1024  # a long-lived log; sparse, so it costs no disk


def config(tmp_path: Path) -> dict[str, Any]:
    backends = {"v1": f"http://127.0.0.1:{free_port()}", "v2": f"http://127.0.0.1:{free_port()}"}
    policy = {"steps": [0, 50, 100], "interval": "1h", "min_samples": 50, "max_duration": "2h"}
    routes = [{"name": "fraud", "match": {"path_prefix": "/f"}, "primary": "v1", "candidate": "v2", "rollout": policy}]
    return base_config(tmp_path, backends, routes)


def seed(path: Path, size: int, lines: list[dict[str, Any]]) -> None:
    """A file of `size` bytes (a hole) followed by `lines`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        f.truncate(size)
        f.seek(size)
        f.write(b"\n" + b"".join(json.dumps(line).encode() + b"\n" for line in lines))


def bytes_read(r: RouterProcess) -> int:
    """Bytes the router process has read with read() and friends (/proc/PID/io rchar), all threads."""
    assert r.proc is not None
    io = dict(line.split(": ") for line in Path(f"/proc/{r.proc.pid}/io").read_text().splitlines())
    return int(io["rchar"])


async def test_rollout_view_reads_only_the_end_of_a_huge_decision_log(
        make_router: RouterFactory, tmp_path: Path) -> None:
    cfg = config(tmp_path)
    seeded = [{"route": "fraud", "reason": f"seed-{i}"} for i in range(10)]
    seed(Path(cfg["state_dir"]) / "decisions.jsonl", BIG, seeded)
    r = await make_router(cfg)

    async with aiohttp.ClientSession() as s:
        before = bytes_read(r)
        async with s.get(r.admin + "/-/routes/fraud/rollout?tail=5") as resp:
            assert resp.status == 200
            log = (await resp.json())["log"]
        read = bytes_read(r) - before

    assert len(log) == 5
    assert read < SCAN_BYTES + 1024 * 1024, f"one /rollout call read {read} bytes of a {BIG}-byte log"


async def test_rollout_view_returns_the_newest_entries_across_rotated_files(
        make_router: RouterFactory, tmp_path: Path) -> None:
    cfg = config(tmp_path)
    seed(Path(cfg["state_dir"]) / "decisions.jsonl.1", 1000, [{"route": "fraud", "reason": f"old-{i}"} for i in range(3)])
    seed(Path(cfg["state_dir"]) / "decisions.jsonl", 1000, [{"route": "other", "reason": "x"},
                                                            {"route": "fraud", "reason": "new-0"}])
    r = await make_router(cfg)

    async with aiohttp.ClientSession() as s, s.get(r.admin + "/-/routes/fraud/rollout?tail=4") as resp:
        reasons = [e["reason"] for e in (await resp.json())["log"]]

    # The router itself logs the rollout's start: the newest entry.
    assert reasons[:3] == ["old-1", "old-2", "new-0"] and reasons[3].startswith("rollout of v2"), reasons


async def test_decision_log_rotates_by_size_and_keeps_a_bounded_number_of_files(
        make_router: RouterFactory, tmp_path: Path) -> None:
    cfg = config(tmp_path)
    state_dir = Path(cfg["state_dir"])
    seed(state_dir / "decisions.jsonl", MAX_BYTES, [])
    for i in range(1, KEEP + 1):
        seed(state_dir / f"decisions.jsonl.{i}", 0, [{"route": "fraud", "reason": f"file-{i}"}])

    r = await make_router(cfg)  # logs the rollout's start: the log is full, so it rotates
    async with aiohttp.ClientSession() as s, s.post(r.admin + "/-/routes/fraud/pause", headers=AUTH) as resp:
        assert resp.status == 200

    names = sorted(p.name for p in state_dir.iterdir() if p.name.startswith("decisions.jsonl"))
    assert names == ["decisions.jsonl", *(f"decisions.jsonl.{i}" for i in range(1, KEEP + 1))]
    assert os.path.getsize(state_dir / "decisions.jsonl") < 10_000
    assert os.path.getsize(state_dir / "decisions.jsonl.1") > MAX_BYTES
    for i in range(2, KEEP + 1):  # each shifted up one; the oldest is gone
        assert f"file-{i - 1}" in (state_dir / f"decisions.jsonl.{i}").read_text()
