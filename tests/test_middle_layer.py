"""The middle layer in process: an Exchange against a small upstream, a Mirror against a small
shadow, the rollout loop against a ledger fed with outcome records, reload reconciliation.

No router subprocess: the runtime is compiled from YAML text, the upstreams are asyncio servers on
this test's own event loop, and the client side is a recording stand-in for `ClientConnection`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp.test_utils import TestClient, TestServer

from router.admin.api import build_admin_app
from router.analysis.compare import Comparison
from router.analysis.decision import Phase
from router.app import Router, restart_notes
from router.config import Config, parse_config
from router.control.ledger import ComparedOutcome, Ledger, LiveOutcome, PairOutcome
from router.control.rollout import RolloutController
from router.control.splits import Splits
from router.control.state import StateStore
from router.dataplane.balancer import HealthRegistry
from router.dataplane.clientside import ClientSide
from router.dataplane.proxy import Exchange
from router.dataplane.request import Request
from router.dataplane.shadow import Mirror
from router.dataplane.shadowplan import PATHS_REMEMBERED, Pacer, ShadowPlan
from router.runtime import Runtime, compile_runtime
from tests.helpers import eventually, free_port

Answer = Callable[[bytes], bytes]


def ok_json(body: bytes) -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)


@pytest.fixture
async def upstream() -> AsyncIterator[Callable[[Answer], Any]]:
    """Start small HTTP/1.1 servers on this loop: each answers every request with answer(request bytes)."""
    servers: list[asyncio.Server] = []
    writers: list[asyncio.StreamWriter] = []

    async def start(answer: Answer) -> str:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writers.append(writer)
            try:
                while True:
                    head = await reader.readuntil(b"\r\n\r\n")
                    length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                                   if line.lower().startswith(b"content-length")), 0)
                    body = await reader.readexactly(length)
                    writer.write(answer(head + body))
                    await writer.drain()
            except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
                pass
            finally:
                writer.close()

        port = free_port()
        servers.append(await asyncio.start_server(handle, "127.0.0.1", port))
        return f"http://127.0.0.1:{port}"

    try:
        yield start
    finally:
        for server in servers:
            server.close()
        for writer in writers:
            writer.close()  # the router's keep-alive connections end here, not at loop teardown
        for server in servers:
            await server.wait_closed()


class Client(ClientSide):
    """Stands in for ClientConnection: records what the Exchange writes and when it is done."""

    @property
    def draining(self) -> bool:
        return False

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.written = bytearray()
        self.done = asyncio.Event()
        self.keep_alive: bool | None = None

    def set_deadline(self, seconds: float, what: str) -> None:
        pass

    def write(self, data: bytes) -> None:
        self.written += data

    def exchange_done(self, ex: Exchange, *, keep_alive: bool) -> None:
        self.keep_alive = keep_alive
        self.done.set()


def config(tmp_path: Path, backends: dict[str, str], route: dict[str, Any]) -> Config:
    doc = {"listen": "127.0.0.1:1", "admin": {"listen": "127.0.0.1:2"}, "state_dir": str(tmp_path / "state"),
           "backends": {n: {"url": u} for n, u in backends.items()},
           "routes": [{"name": "fraud", "match": {"path_prefix": "/v1/models/fraud"}, **route}]}
    return parse_config(yaml.safe_dump(doc))


def runtime(cfg: Config) -> Runtime:
    ledger = Ledger(Splits(StateStore(cfg.state_dir)))
    ledger.reconcile(cfg)
    rt, _ = compile_runtime(cfg, ledger, Mirror(), HealthRegistry(), None)
    return rt


async def exchange(rt: Runtime, body: bytes = b'{"instances": [[1, 2]]}') -> Client:
    loop = asyncio.get_running_loop()
    req = Request(b"POST", b"/v1/models/fraud:predict", b"1.1",
                  [(b"host", b"Host", b"x"), (b"content-length", b"Content-Length", b"%d" % len(body))],
                  {b"host": b"x", b"content-length": b"%d" % len(body)}, body, True, "127.0.0.1", loop.time())
    client = Client()
    Exchange(client, req, rt).start()
    async with asyncio.timeout(10):
        await client.done.wait()
    return client


async def test_exchange_relays_the_answer_and_reports_one_live_outcome(tmp_path: Path, upstream: Any) -> None:
    seen: list[bytes] = []
    url = await upstream(lambda raw: seen.append(raw) or ok_json(b'{"predictions": [1]}'))
    rt = runtime(config(tmp_path, {"v1": url}, {"primary": "v1"}))
    client = await exchange(rt)
    assert client.written.startswith(b"HTTP/1.1 200 OK\r\n")
    assert client.written.endswith(b'{"predictions": [1]}')
    assert b"X-Model-Backend: v1\r\n" in client.written and client.keep_alive is True
    assert b"Via: " in seen[0] and b"X-Request-Id: " in seen[0]  # forwarding headers set upstream
    assert rt.ledger.snapshot(rt.config.routes[0]).requests_by_backend == {"v1": 1}
    assert dict(rt.ledger.stats.requests) == {("fraud", "v1", 200): 1}


async def test_exchange_answers_502_when_the_upstream_refuses(tmp_path: Path) -> None:
    rt = runtime(config(tmp_path, {"v1": f"http://127.0.0.1:{free_port()}"}, {"primary": "v1"}))
    client = await exchange(rt)
    assert client.written.startswith(b"HTTP/1.1 502 ")
    assert rt.ledger.stats.requests[("fraud", "v1", 502)] == 1
    assert rt.ledger.stats.upstream_errors[("v1", "connect_refused")] >= 1


async def test_mirror_compares_against_the_shadow_and_the_ledger_counts_it(tmp_path: Path, upstream: Any) -> None:
    live = await upstream(lambda raw: ok_json(b'{"predictions": [{"label": "fraud"}]}'))
    shadow_seen: list[bytes] = []
    shadow = await upstream(lambda raw: shadow_seen.append(raw) or ok_json(b'{"predictions": [{"label": "ok"}]}'))
    rt = runtime(config(tmp_path, {"v1": live, "v2": shadow},
                        {"primary": "v1", "shadow": {"backend": "v2", "compare": {"format": "kserve-v1"}}}))
    client = await exchange(rt)
    assert client.written.endswith(b'{"predictions": [{"label": "fraud"}]}')  # the live answer, untouched
    stats = rt.ledger.shadow_stats("fraud")
    assert stats is not None
    await eventually(lambda: stats.compared == 1, "the mirrored pair to be compared")
    assert stats.mirrored == 1 and stats.agreements == 0
    assert b"X-Shadow-Request: 1\r\n" in shadow_seen[0]
    assert [d["fields"] for d in stats.recent] == [["$.predictions[*].label"]]
    assert rt.mirror.in_flight("fraud") == 0


async def test_mirror_paces_copies_under_their_own_label(tmp_path: Path, upstream: Any) -> None:
    url = await upstream(lambda raw: ok_json(b'{"predictions": [1]}'))
    rt = runtime(config(tmp_path, {"v1": url, "v2": url},
                        {"primary": "v1", "shadow": {"backend": "v2", "max_concurrency": 1}}))
    rt.mirror.pacers.clear()
    await exchange(rt)
    stats = rt.ledger.shadow_stats("fraud")
    assert stats is not None
    await eventually(lambda: rt.mirror.in_flight("fraud") == 0, "the first copy to end")
    # The shadow looked slow: the next copy is due only after its typical latency.
    rt.mirror.pacers["fraud"].latency_ewma = 3600.0
    rt.mirror.pacers["fraud"].next_send = asyncio.get_running_loop().time() + 3600.0
    await exchange(rt)
    await exchange(rt)
    assert stats.mirrored == 1 and stats.dropped == {"paced": 2}


async def test_a_reload_gives_the_mirror_new_settings_and_keeps_its_pacing(tmp_path: Path, upstream: Any) -> None:
    url = await upstream(lambda raw: ok_json(b'{"predictions": [1]}'))
    cfg = config(tmp_path, {"v1": url, "v2": url}, {"primary": "v1", "shadow": {"backend": "v2", "max_concurrency": 1}})
    ledger, mirror = Ledger(Splits(StateStore(cfg.state_dir))), Mirror()
    ledger.reconcile(cfg)
    rt, _ = compile_runtime(cfg, ledger, mirror, HealthRegistry(), None)
    await exchange(rt)
    await eventually(lambda: mirror.in_flight("fraud") == 0, "the first copy to end")
    pacer = mirror.pacers["fraud"]
    assert pacer.latency_ewma > 0  # learnt from the first copy
    # The reloaded route mirrors only small bodies: the next request is skipped for its size, which
    # the old settings would not have done, by the same pacer (a reload does not forget the shadow).
    cfg2 = config(tmp_path, {"v1": url, "v2": url},
                  {"primary": "v1", "shadow": {"backend": "v2", "max_concurrency": 1, "max_body": 4}})
    ledger.reconcile(cfg2)
    rt2, _ = compile_runtime(cfg2, ledger, mirror, HealthRegistry(), None)
    await exchange(rt2)
    stats = rt2.ledger.shadow_stats("fraud")
    assert stats is not None and stats.mirrored == 1 and stats.dropped == {"body_too_large": 1}
    assert mirror.pacers["fraud"] is pacer


async def test_shadow_plan_remembers_path_answers_within_a_bound(tmp_path: Path) -> None:
    rt = runtime(config(tmp_path, {"v1": "http://127.0.0.1:1", "v2": "http://127.0.0.1:2"},
                        {"primary": "v1", "shadow": {"backend": "v2", "paths": ["/v1/models/*:predict", "/v2/*"]}}))
    plan = ShadowPlan(rt, rt.config.routes[0], Pacer())
    assert plan.mirrors("/v1/models/a:predict") and not plan.mirrors("/v1/models/a/metadata")
    assert not plan.mirrors("/v2/repository/models/a/unload")  # never, whatever the patterns say
    assert all(plan.mirrors(f"/v1/models/m{i}:predict") for i in range(3 * PATHS_REMEMBERED))
    assert not plan.mirrors("/v1/models/a/metadata")  # asked again after the memory was cleared
    assert len(plan._matched) <= PATHS_REMEMBERED


# -- the rollout loop against a ledger fed with outcome records -----------------------------------

ROLLOUT = {"primary": "v1", "candidate": "v2", "shadow": {"backend": "v2", "compare": {"format": "kserve-v1"}},
           "rollout": {"steps": [0, 50, 100], "interval": "1s", "min_samples": 20, "max_duration": "1h",
                       "gates": {"min_agreement": 0.8, "max_latency_ratio": None, "max_error_rate_increase": None}}}


def controller(tmp_path: Path) -> tuple[RolloutController, Ledger, Config]:
    cfg = config(tmp_path, {"v1": "http://127.0.0.1:1", "v2": "http://127.0.0.1:2"}, ROLLOUT)
    ledger = Ledger(Splits(StateStore(cfg.state_dir)))
    ledger.reconcile(cfg)
    rollouts = RolloutController(cfg.state_dir, ledger)
    rollouts.configure(cfg)
    return rollouts, ledger, cfg


def feed(ledger: Ledger, n: int, agree: bool) -> None:
    for _ in range(n):
        ledger.pair(PairOutcome("fraud", "v2", 200, None, 0.01, 200, None, 0.01, False))
        ledger.compared(ComparedOutcome("fraud", "v2", Comparison(agree, {"$.label": agree}), None, None))


def test_rollout_loop_advances_on_agreeing_records(tmp_path: Path) -> None:
    rollouts, ledger, cfg = controller(tmp_path)
    rr = rollouts.routes["fraud"]
    assert rr.state.phase is Phase.SHADOWING and ledger.percent(cfg.routes[0]) == 0
    feed(ledger, 400, agree=True)
    rollouts.tick(now=rr.step_started_at + 2)
    assert rr.state.step_index == 1 and ledger.percent(cfg.routes[0]) == 50
    assert ledger.evidence("fraud") is not None and ledger.evidence("fraud").comparisons == 0  # type: ignore[union-attr]


def test_rollout_loop_rolls_back_on_disagreeing_records(tmp_path: Path) -> None:
    rollouts, ledger, cfg = controller(tmp_path)
    feed(ledger, 400, agree=False)
    rollouts.tick(now=rollouts.routes["fraud"].step_started_at + 2)
    assert rollouts.routes["fraud"].state.phase is Phase.ROLLED_BACK
    assert ledger.percent(cfg.routes[0]) == 0
    assert rollouts.routes["fraud"].last["evidence"]["comparisons"] == 400


def test_records_for_another_backend_are_not_rollout_evidence(tmp_path: Path) -> None:
    _, ledger, _ = controller(tmp_path)
    ledger.pair(PairOutcome("fraud", "v3", 200, None, 0.01, 500, None, 0.01, False))
    ledger.live(LiveOutcome("fraud", "v1", 200, 0.01))  # a shadowed step: live requests are not its evidence
    ev = ledger.evidence("fraud")
    assert ev is not None and ev.primary.requests == 0 and ev.candidate.requests == 0


# -- reload reconciliation --------------------------------------------------------------------------

def test_reconcile_keeps_shadow_stats_only_for_unchanged_pairs(tmp_path: Path) -> None:
    backends = {"v1": "http://127.0.0.1:1", "v2": "http://127.0.0.1:2", "v3": "http://127.0.0.1:3"}
    first = config(tmp_path, backends, {"primary": "v1", "shadow": {"backend": "v2"}})
    ledger = Ledger(Splits(StateStore(first.state_dir)))
    ledger.reconcile(first)
    before = ledger.shadow_stats("fraud")
    assert ledger.reconcile(first) == [] and ledger.shadow_stats("fraud") is before
    ledger.reconcile(config(tmp_path, backends, {"primary": "v1", "shadow": {"backend": "v3"}}))
    assert ledger.shadow_stats("fraud") is not before
    ledger.reconcile(config(tmp_path, backends, {"primary": "v1"}))
    assert ledger.shadow_stats("fraud") is None


def test_reconcile_resets_runtime_splits_of_changed_routes(tmp_path: Path) -> None:
    backends = {"v1": "http://127.0.0.1:1", "v2": "http://127.0.0.1:2"}
    cfg = config(tmp_path, backends, {"primary": "v1", "candidate": "v2"})
    ledger = Ledger(Splits(StateStore(cfg.state_dir)))
    ledger.set_split(cfg.routes[0], 30)
    assert ledger.reconcile(cfg) == [] and ledger.percent(cfg.routes[0]) == 30
    changed = config(tmp_path, backends, {"primary": "v1", "candidate": "v2", "split": {"candidate_percent": 5}})
    assert ledger.reconcile(changed) == ["runtime splits reset to the YAML for changed routes: fraud"]
    assert ledger.percent(changed.routes[0]) == 5


def test_restart_notes_name_each_setting_a_reload_cannot_apply(tmp_path: Path) -> None:
    cfg = config(tmp_path, {"v1": "http://127.0.0.1:1"}, {"primary": "v1"})
    assert restart_notes(cfg, cfg) == []
    text = yaml.safe_dump({"listen": "127.0.0.1:3", "admin": {"listen": "127.0.0.1:2"},
                           "state_dir": str(tmp_path / "state"), "backends": {"v1": {"url": "http://127.0.0.1:1"}},
                           "monitoring": {"capture_bytes": "1KiB"},
                           "routes": [{"name": "fraud", "match": {"path_prefix": "/v1/models/fraud"},
                                       "primary": "v1"}]})
    notes = restart_notes(cfg, parse_config(text))
    assert any(n.startswith("listen changed (127.0.0.1:1 -> 127.0.0.1:3)") for n in notes)
    assert any("monitoring.capture_bytes" in n for n in notes)


async def test_healthz_says_starting_until_the_data_port_listens(tmp_path: Path) -> None:
    """The admin listener comes up first; a readiness probe must not see 200 before the data port."""
    doc = {"listen": f"127.0.0.1:{free_port()}", "admin": {"listen": f"127.0.0.1:{free_port()}"},
           "state_dir": str(tmp_path / "state"), "backends": {"m": {"url": "http://127.0.0.1:9"}},
           "routes": [{"name": "m", "match": {"path_prefix": "/m"}, "primary": "m"}]}
    config = parse_config(yaml.safe_dump(doc))
    router = Router(config, tmp_path / "r.yaml")
    async with TestClient(TestServer(build_admin_app(router))) as client:
        starting = await client.get("/-/healthz")
        assert (starting.status, await starting.json()) == (503, {"status": "starting"})
        await router.data.start(config.listen.host, config.listen.port)
        try:
            ready = await client.get("/-/healthz")
            assert (ready.status, await ready.json()) == (200, {"status": "ok"})
        finally:
            await router.data.drain(0.1)
