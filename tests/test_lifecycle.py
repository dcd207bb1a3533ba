"""The life of a model version around the decisions, against real router processes: rollback
after a promotion, finishing a promotion in the YAML, mirroring after a rollout, compare changes."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web

from router.analysis.decision import OperatorAction
from router.config import Config, parse_config
from router.control.ledger import Ledger
from router.control.rollout import RolloutController
from router.control.splits import Splits
from router.control.state import StateStore
from tests.helpers import ROOT, BackendFactory, RouterFactory, base_config, eventually, get_json
from tests.test_rollout import AUTH, ModelFactory, drive, hook, rollout, rollout_route

FINAL = {"promoted", "rolled_back", "paused"}


async def predict(s: aiohttp.ClientSession, url: str, n: int) -> dict[str, int]:
    """Send n predictions one after another; count the backends that answered."""
    seen: dict[str, int] = {}
    for i in range(n):
        async with s.post(url + "/v1/models/fraud:predict", json={"instances": [[i % 7, 2, 3, 4]]}) as resp:
            assert resp.status == 200
            backend = resp.headers["X-Model-Backend"]
            seen[backend] = seen.get(backend, 0) + 1
    return seen


def decisions(tmp_path: Path) -> list[dict[str, Any]]:
    lines = (tmp_path / "state" / "decisions.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


async def test_rollback_after_promotion_records_who_and_why_and_stops_mirroring(
        make_router: RouterFactory, make_model: ModelFactory, make_backend: BackendFactory, tmp_path: Path) -> None:
    v1, twin = await make_model(version="v1"), await make_model(version="v1", seed=3)
    url, received = await hook(make_backend)
    r = await make_router(base_config(tmp_path, {"v1": v1, "v2": twin}, rollout_route(url)))
    async with aiohttp.ClientSession() as s:
        assert (await drive(s, r.url, r.admin, FINAL))["phase"] == "promoted"
        shadow = await get_json(s, r.admin + "/-/routes/fraud/shadow")
        assert shadow["mirroring"] is False and "promoted" in shadow["mirroring_stopped"]
        async with s.post(r.admin + "/-/routes/fraud/pause", headers=AUTH) as resp:
            assert resp.status == 409
            refused = (await resp.json())["error"]["message"]
        assert "cannot pause a rollout that is promoted" in refused and "`model-router rollback fraud`" in refused
        note = {"reason": "p99 doubled in eu-west", "actor": "alice"}
        async with s.post(r.admin + "/-/routes/fraud/rollback", json=note, headers=AUTH) as resp:
            assert resp.status == 200
            answer = await resp.json()
        assert answer["phase"] == "rolled_back" and "rolled back by alice from promoted" in answer["reason"]
        assert "p99 doubled in eu-west" in answer["reason"]
        assert await predict(s, r.url, 20) == {"v1": 20}, "a rollback sends all traffic to the primary at once"
        mirrored = (await get_json(s, r.admin + "/-/routes/fraud/shadow"))["mirrored"]
        await predict(s, r.url, 20)
        shadow = await get_json(s, r.admin + "/-/routes/fraud/shadow")
        assert shadow["mirrored"] == mirrored and "rolled_back" in shadow["mirroring_stopped"]
        async with s.post(r.admin + "/-/routes/fraud/promote", headers=AUTH) as resp:
            assert resp.status == 409 and "`model-router restart fraud`" in (await resp.json())["error"]["message"]
        async with s.post(r.admin + "/-/routes/fraud/split", json={"candidate_percent": 0}, headers=AUTH) as resp:
            assert resp.status == 409 and "model-router restart fraud" in (await resp.json())["error"]["message"]
        async with s.post(r.admin + "/-/routes/fraud/restart", data=b"not json", headers=AUTH) as resp:
            assert resp.status == 400 and "reason" in (await resp.json())["error"]["message"]
        async with s.post(r.admin + "/-/routes/fraud/restart", headers=AUTH) as resp:
            assert resp.status == 200 and (await resp.json())["phase"] == "shadowing"
        assert (await get_json(s, r.admin + "/-/routes/fraud/shadow"))["mirroring"] is True
    entry = next(e for e in reversed(decisions(tmp_path)) if e["action"] == "rollback")
    assert entry["operator"] == note and entry["from"]["phase"] == "promoted"
    assert entry["step_label"] == "step 3 of 3 (100%)"
    sent = await eventually(lambda: [e for e in received if e["phase"] == "rolled_back"], "the rollback's webhook")
    assert sent[0]["operator"] == note and sent[0]["from_phase"] == "promoted"


async def test_finalizing_a_promotion_completes_the_rollout_and_starts_none(
        make_router: RouterFactory, make_model: ModelFactory, tmp_path: Path) -> None:
    v1, twin = await make_model(version="v1"), await make_model(version="v1", seed=3)
    cfg = base_config(tmp_path, {"v1": v1, "v2": twin}, rollout_route())
    r = await make_router(cfg)
    async with aiohttp.ClientSession() as s:
        assert (await drive(s, r.url, r.admin, FINAL))["phase"] == "promoted"
        before = r.config_path.read_text()
        shown = await asyncio.to_thread(finalize, r.config_path, r.config["admin"]["listen"])
        assert shown.returncode == 0, shown.stderr
        changed = [line for line in shown.stdout.splitlines() if line.startswith(("+", "-")) and line[:3] not in ("---", "+++")]
        assert sorted(changed) == sorted(["-  primary: v1", "-  candidate: v2", "+  primary: v2", "+  candidate: v1",
                                          "-    backend: v2", "+    backend: v1"]), shown.stdout
        assert r.config_path.read_text() == before, "without --write the file is untouched"
        written = await asyncio.to_thread(finalize, r.config_path, r.config["admin"]["listen"], "--write")
        assert written.returncode == 0, written.stderr
        route = yaml.safe_load(r.config_path.read_text())["routes"][0]
        assert (route["primary"], route["candidate"], route["shadow"]["backend"]) == ("v2", "v1", "v1")
        async with s.post(r.admin + "/-/reload", headers=AUTH) as resp:
            assert resp.status == 200
        info = await rollout(s, r.admin)
        assert info["phase"] == "completed" and info["primary"] == "v2" and info["candidate_percent"] == 0
        assert await predict(s, r.url, 100) == {"v2": 100}, "no rollout of the old primary may start"
        async with s.post(r.admin + "/-/routes/fraud/restart", headers=AUTH) as resp:
            assert resp.status == 409 and "completed" in (await resp.json())["error"]["message"]
        shadow = await get_json(s, r.admin + "/-/routes/fraud/shadow")
        assert shadow["mirroring"] is False and "completed" in shadow["mirroring_stopped"]
        r.stop()
        r = await make_router(yaml.safe_load(r.config_path.read_text()))
        assert (await rollout(s, r.admin))["phase"] == "completed", "the completion survives a restart"
        assert await predict(s, r.url, 20) == {"v2": 20}
    complete = [e for e in decisions(tmp_path) if e["action"] == "complete"]
    assert len(complete) == 1 and "v2 is the primary now (was v1)" in complete[0]["reason"]


def finalize(path: Path, admin: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "router", "finalize", "fraud", "--config", str(path),
                           "--admin", admin, *extra], cwd=ROOT, capture_output=True, text=True, timeout=60)


async def test_bad_candidate_rollback_names_the_disagreeing_fields(
        make_router: RouterFactory, make_model: ModelFactory, tmp_path: Path) -> None:
    v1, bad = await make_model(version="v1"), await make_model(version="v2", perturb=3.0, seed=5)
    r = await make_router(base_config(tmp_path, {"v1": v1, "v2": bad}, rollout_route()))
    async with aiohttp.ClientSession() as s:
        info = await drive(s, r.url, r.admin, FINAL)
    assert info["phase"] == "rolled_back"
    entry = next(e for e in reversed(info["log"]) if e["action"] == "rollback")
    top = entry["evidence"]["top_disagreeing_fields"]
    assert top and top[0]["field"] == "$.predictions[*].label" and 0 < top[0]["rate"] <= 1
    assert f"most disagreeing fields: $.predictions[*].label {100 * top[0]['rate']:.1f}%" in entry["reason"]
    assert "failed at step 1 of 3 (0%)" in entry["reason"]


async def test_a_compare_change_starts_a_new_shadow_report(make_router: RouterFactory, make_backend: BackendFactory,
                                                           tmp_path: Path) -> None:
    async def answer(request: web.Request) -> web.StreamResponse:
        return web.json_response({"label": "a", "score": 0.5})

    a, b = await make_backend("a", answer), await make_backend("b", answer)
    route = {"name": "fraud", "match": {"path_prefix": "/v1/models/fraud"}, "primary": "a",
             # max_concurrency: pacing never drops a copy, so every request below is compared
             "shadow": {"backend": "b", "max_concurrency": 100_000, "compare": {"format": "json", "paths": ["$.label"]}}}
    cfg = base_config(tmp_path, {"a": a.url, "b": b.url}, [route])
    r = await make_router(cfg)
    async with aiohttp.ClientSession() as s:
        await predict(s, r.url, 10)

        async def compared() -> Any:
            report = await get_json(s, r.admin + "/-/routes/fraud/shadow")
            return report if report["compared"] == 10 else None

        before = await eventually(compared, "10 comparisons")
        assert before["previous"] is None and [f["field"] for f in before["fields"]] == ["$.label"]
        route["shadow"]["compare"]["paths"] = ["$.score"]
        r.write(cfg)
        async with s.post(r.admin + "/-/reload", headers=AUTH) as resp:
            assert resp.status == 200
        after = await get_json(s, r.admin + "/-/routes/fraud/shadow")
        assert after["compared"] == 0 and after["fields"] == []
        assert after["previous"]["compared"] == 10 and [f["field"] for f in after["previous"]["fields"]] == ["$.label"]
        cfg["limits"]["request_timeout"] = "3s"  # an unrelated change keeps the report
        r.write(cfg)
        async with s.post(r.admin + "/-/reload", headers=AUTH) as resp:
            assert resp.status == 200
        await predict(s, r.url, 3)

        async def three() -> Any:
            report = await get_json(s, r.admin + "/-/routes/fraud/shadow")
            return report if report["compared"] == 3 else None

        assert [f["field"] for f in (await eventually(three, "3 comparisons"))["fields"]] == ["$.score"]


def controller_config(tmp_path: Path, primary: str, candidate: str, **shadow: Any) -> Config:
    routes = rollout_route()
    routes[0].update(primary=primary, candidate=candidate)
    routes[0]["shadow"].update(backend=candidate, **shadow)
    cfg = base_config(tmp_path, {n: f"http://127.0.0.1:{9000 + i}" for i, n in enumerate(("v1", "v2", "v3"))}, routes)
    return parse_config(yaml.safe_dump(cfg), "r.yaml")


@pytest.mark.parametrize(("after_rollout", "swap_to", "phase", "mirroring"), [
    ("stop", ("v2", "v1"), "completed", False),  # the finished rollout: no reverse rollout, no copies
    ("continue", ("v2", "v1"), "completed", True),
    ("stop", ("v2", "v3"), "shadowing", True),  # a new candidate: the YAML asks for a new rollout
    ("stop", ("v1", "v3"), "shadowing", True),
])
def test_reload_after_promotion(tmp_path: Path, after_rollout: str, swap_to: tuple[str, str], phase: str,
                                mirroring: bool) -> None:
    """In process: the controller's reconcile on reload, fed configs only."""
    ledger = Ledger(Splits(StateStore(tmp_path / "state")))
    rollouts = RolloutController(tmp_path / "state", ledger)
    config = controller_config(tmp_path, "v1", "v2", after_rollout=after_rollout)
    ledger.reconcile(config)
    rollouts.configure(config)
    rollouts.operator("fraud", OperatorAction.PROMOTE)
    rollouts.operator("fraud", OperatorAction.PROMOTE)
    assert rollouts.describe("fraud")["phase"] == "promoted"  # type: ignore[index]
    assert ("fraud" in ledger.mirror_stopped) is (after_rollout == "stop")
    config = controller_config(tmp_path, *swap_to, after_rollout=after_rollout)
    ledger.reconcile(config)
    rollouts.configure(config)
    info = rollouts.describe("fraud")
    assert info is not None and (info["phase"], info["candidate_percent"]) == (phase, 0)
    assert ledger.splits.driven["fraud"] == 0
    assert ("fraud" not in ledger.mirror_stopped) is mirroring
    completed = [e for e in rollouts.tail("fraud", 10) if e["action"] == "complete"]
    assert len(completed) == (swap_to[0] == "v2")
