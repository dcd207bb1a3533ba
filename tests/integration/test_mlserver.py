"""The router in front of real MLServer instances (sklearn models trained here), with real clients.

Two MLServer processes serve a model named `clf`: A a logistic regression, B a decision tree,
both trained at test time in the MLServer venv (`make mlserver-env`). Each check compares what the
router reports with the truth got by calling both servers directly, or computed by sklearn itself.
MLServer runs with `parallel_workers: 0`: its worker pool does not start under uvloop.
"""

from __future__ import annotations

import json
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.helpers import ROOT, TOKEN, RouterFactory, base_config, free_port

ML_VENV = ROOT / ".venv-mlserver" / "bin"
TOOL = Path(__file__).with_name("mlserver_tool.py")
AUTH = {"Authorization": f"Bearer {TOKEN}"}
ROWS = 5  # per request in the agreement check: MLServer gzips answers over 500 bytes


@dataclass
class Models:
    folder: Path
    x: list[list[float]]
    y: list[int]
    feedback_rows: int
    accuracy: dict[str, float]


@dataclass
class Servers:
    a: str
    b: str


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Models:
    assert (ML_VENV / "mlserver").exists(), "the MLServer venv is missing: run `make mlserver-env`"
    folder = tmp_path_factory.mktemp("models")
    subprocess.run([str(ML_VENV / "python"), str(TOOL), "train", str(folder)], check=True, timeout=120)
    data = json.loads((folder / "data.json").read_text())
    return Models(folder, data["x"], data["y"], data["feedback_rows"], data["accuracy"])


def _start(models: Models, name: str, home: Path) -> tuple[subprocess.Popen[bytes], str, Path]:
    root = home / name
    (root / "clf").mkdir(parents=True)
    for f in (models.folder / name).iterdir():
        (root / "clf" / f.name).write_bytes(f.read_bytes())
    port = free_port()
    (root / "settings.json").write_text(json.dumps({
        "host": "127.0.0.1", "http_port": port, "grpc_port": free_port(), "metrics_port": free_port(),
        "parallel_workers": 0, "debug": False}))
    log = root / "mlserver.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([str(ML_VENV / "mlserver"), "start", str(root)], stdout=out, stderr=subprocess.STDOUT)
    return proc, f"http://127.0.0.1:{port}", log


def _wait_ready(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"MLServer exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url + "/v2/models/clf/ready", timeout=2) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    raise AssertionError(f"MLServer at {url} not ready within {timeout}s:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def servers(models: Models, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    home = tmp_path_factory.mktemp("mlserver")
    started = []
    try:
        for name in ("a", "b"):
            started.append(_start(models, name, home))
        for proc, url, log in started:
            _wait_ready(url, proc, log)
        yield Servers(started[0][1], started[1][1])
    finally:
        for proc, _, _ in started:
            proc.terminate()
        for proc, _, _ in started:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def infer_body(rows: list[list[float]], probabilities: bool = True) -> dict[str, Any]:
    body: dict[str, Any] = {"inputs": [{"name": "input-0", "shape": [len(rows), 6], "datatype": "FP64",
                                        "data": [v for row in rows for v in row]}]}
    if probabilities:
        body["outputs"] = [{"name": "predict"}, {"name": "predict_proba"}]
    return body


def labels(answer: dict[str, Any]) -> list[int]:
    return next(o["data"] for o in answer["outputs"] if o["name"] == "predict")


def shadow_route(**extra: Any) -> list[dict[str, Any]]:
    return [{"name": "clf", "match": {"path_prefix": "/v2"}, "primary": "a",
             # max_concurrency: pacing never drops a copy; the tests count every request's comparison
             "shadow": {"backend": "b", "max_concurrency": 100_000,
                        "compare": {"format": "open-inference-v2", "agree": "labels"}}, **extra}]


async def settle(s: aiohttp.ClientSession, admin: str, expected: int) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    report: dict[str, Any] = {}
    while time.monotonic() < deadline:
        async with s.get(admin + "/-/routes/clf/shadow") as resp:
            report = await resp.json()
        done = report["compared"] + report["extraction_errors"] + sum(report["not_compared"].values())
        if report["in_flight"] == 0 and done >= expected:
            return report
        await _pause()
    raise AssertionError(f"shadow comparisons did not settle at {expected}: {report}")


async def _pause() -> None:
    import asyncio
    await asyncio.sleep(0.05)


async def test_agreement_through_the_router_equals_the_truth_and_gzip_is_compared(
        make_router: RouterFactory, models: Models, servers: Servers, tmp_path: Path) -> None:
    r = await make_router(base_config(tmp_path, {"a": servers.a, "b": servers.b}, shadow_route()))
    n = 120
    agree_requests = agree_rows = 0
    encodings = set()
    async with aiohttp.ClientSession() as s:  # sends Accept-Encoding: gzip, deflate, as requests does
        for i in range(n):
            body = infer_body(models.x[i * ROWS:(i + 1) * ROWS])
            async with s.post(r.url + "/v2/models/clf/infer", json=body) as resp:
                assert resp.status == 200
                encodings.add(resp.headers.get("Content-Encoding"))
                routed = labels(await resp.json())
            answers = []
            for url in (servers.a, servers.b):  # the truth: both servers, called directly
                async with s.post(url + "/v2/models/clf/infer", json=body) as resp:
                    answers.append(labels(await resp.json()))
            assert routed == answers[0]
            same = [x == y for x, y in zip(*answers, strict=True)]
            agree_requests += all(same)
            agree_rows += sum(same)
        report = await settle(s, r.admin, n)
    assert encodings == {"gzip"}  # every answer was compressed, and relayed as it was
    assert report["mirrored"] == n and report["compared"] == n, report
    assert report["extraction_errors"] == 0 and report["extraction_error_reasons"] == {}
    assert report["label_agreement"]["k"] == agree_requests and report["label_agreement"]["n"] == n
    instance = report["instance_label_agreement"]
    assert (instance["k"], instance["n"], instance["requests"]) == (agree_rows, n * ROWS, n)
    assert 0 < agree_rows < n * ROWS  # the two models differ: the check could fail


async def test_quality_equals_sklearn_accuracy_for_live_and_shadow(
        make_router: RouterFactory, models: Models, servers: Servers, tmp_path: Path) -> None:
    cfg = base_config(tmp_path, {"a": servers.a, "b": servers.b}, shadow_route(),
                      monitoring={"feedback": {"retention": "1h"}})
    r = await make_router(cfg)
    n = models.feedback_rows
    truth = []
    async with aiohttp.ClientSession() as s:
        for i in range(n):
            # MLServer's default output only: `predict`, integer classes
            async with s.post(r.url + "/v2/models/clf/infer", json=infer_body([models.x[i]], False),
                              headers={"X-Request-Id": f"client-{i}"}) as resp:
                assert resp.status == 200 and labels(await resp.json())
                truth.append({"request_id": resp.headers["X-Router-Request-Id"], "label": models.y[i]})
        await settle(s, r.admin, n)
        async with s.post(r.admin + "/-/feedback", json=truth, headers=AUTH) as resp:
            answer = await resp.json()
            assert resp.status == 200 and answer["accepted"] == n, answer
        async with s.get(r.admin + "/-/routes/clf/quality") as resp:
            quality = await resp.json()
    for name in ("a", "b"):  # b only ever answered as the shadow
        scores = quality["backends"][name]
        assert scores["labelled"] == n and scores["unscored"] == 0, scores
        assert scores["accuracy"]["rate"] == pytest.approx(models.accuracy[name], abs=1e-12), (name, scores)


async def test_tritonclient_reads_the_routers_errors(
        make_router: RouterFactory, servers: Servers, tmp_path: Path) -> None:
    routes = [{"name": "clf", "match": {"path_prefix": "/v2/models/clf/"}, "primary": "a"},
              {"name": "dead", "match": {"path_prefix": "/v2/models/dead/"}, "primary": "gone", "retries": 0}]
    cfg = base_config(tmp_path, {"a": servers.a, "gone": f"http://127.0.0.1:{free_port()}"}, routes,
                      limits={"max_body": "64KiB"})
    r = await make_router(cfg)
    out = subprocess.run([str(ML_VENV / "python"), str(TOOL), "triton", r.url.removeprefix("http://")],
                         capture_output=True, text=True, timeout=60, check=True)
    results = json.loads(out.stdout)
    assert results["ok"] == "ok"
    for call, words in (("unrouted", "no route matches"), ("dead", "cannot connect"), ("too_large", "max_body")):
        assert results[call].startswith("InferenceServerException") and words in results[call], results


async def test_a_model_unload_is_not_mirrored(
        make_router: RouterFactory, servers: Servers, tmp_path: Path) -> None:
    r = await make_router(base_config(tmp_path, {"a": servers.a, "b": servers.b}, shadow_route()))
    async with aiohttp.ClientSession() as s:
        try:
            async with s.post(r.url + "/v2/repository/models/clf/unload") as resp:
                assert resp.status == 200
            async with s.get(servers.a + "/v2/models/clf/ready") as resp:
                assert resp.status != 200  # the live server did unload it
            async with s.get(servers.b + "/v2/models/clf/ready") as resp:
                assert resp.status == 200  # the shadow's model is untouched
            async with s.get(r.admin + "/-/routes/clf/shadow") as resp:
                report = await resp.json()
            assert report["mirrored"] == 0 and report["not_mirrored"] == {"path": 1}
        finally:
            async with s.post(servers.a + "/v2/repository/models/clf/load") as resp:
                assert resp.status == 200
