"""The example backends: model_server's protocols and knobs, fast_server's HTTP/1.1 framing.

Every server listens on a real socket on an ephemeral port; nothing asserts timings.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
from pytest_aiohttp import AiohttpServer

from backends import fast_server, textgen
from backends.model import LABELS, agreement, load
from backends.model_server import ServerOptions, build_app

ROOT = Path(__file__).resolve().parent.parent
StartModel = Callable[..., Awaitable[str]]
BATCH = np.random.default_rng(123).normal(size=(200, 4)).round(4).tolist()
V2_BODY = {"inputs": [{"name": "input-0", "shape": [2, 4], "datatype": "FP32", "data": [[1, 2, 3, 4], [0, 0, 0, 0]]}]}


@pytest.fixture
async def start_model(aiohttp_server: AiohttpServer) -> StartModel:
    """Start model servers in-process; pytest-aiohttp stops them after the test."""

    async def start(**options: Any) -> str:
        server = await aiohttp_server(build_app(ServerOptions(**options)))
        return f"http://127.0.0.1:{server.port}"

    return start


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def call(http: aiohttp.ClientSession, method: str, url: str, body: object = None,
               raw: bytes | None = None) -> tuple[int, Any]:
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    async with http.request(method, url, data=data) as resp:
        assert resp.content_type == "application/json"
        return resp.status, await resp.json()


async def predict(http: aiohttp.ClientSession, url: str, instances: list[Any]) -> list[dict[str, Any]]:
    status, body = await call(http, "POST", url + "/v1/models/fraud:predict", {"instances": instances})
    assert status == 200, body
    predictions: list[dict[str, Any]] = body["predictions"]
    return predictions


# -- model_server: protocols -----------------------------------------------------------------

async def test_v1_predict(start_model: StartModel, http: aiohttp.ClientSession) -> None:
    url = await start_model(version="v2")
    status, body = await call(http, "POST", url + "/v1/models/fraud:predict",
                              {"instances": [[1, 2, 3, 4], {"features": [0.5, -1, 0, 2.5]}]})
    assert status == 200
    assert body["model_name"] == "fraud" and body["model_version"] == "v2"
    assert len(body["predictions"]) == 2
    for p in body["predictions"]:
        assert set(p) == {"label", "scores"} and p["label"] in LABELS and len(p["scores"]) == 3
        assert sum(p["scores"]) == pytest.approx(1, abs=1e-5)
        assert p["label"] == LABELS[int(np.argmax(p["scores"]))]


async def test_v2_infer_matches_v1(start_model: StartModel, http: aiohttp.ClientSession) -> None:
    url = await start_model()
    status, body = await call(http, "POST", url + "/v2/models/fraud/infer", {**V2_BODY, "id": "req-7"})
    assert status == 200
    assert (body["model_name"], body["model_version"], body["id"]) == ("fraud", "v1", "req-7")
    scores, labels = body["outputs"]
    assert (scores["name"], scores["shape"], scores["datatype"]) == ("scores", [2, 3], "FP32")
    assert (labels["name"], labels["shape"], labels["datatype"]) == ("label", [2], "BYTES")
    flat = {**V2_BODY["inputs"][0], "data": [1, 2, 3, 4, 0, 0, 0, 0]}
    _, again = await call(http, "POST", url + "/v2/models/fraud/infer", {"inputs": [flat], "id": "req-7"})
    assert again == body  # nested and flat data are the same tensor
    v1 = await predict(http, url, [[1, 2, 3, 4], [0, 0, 0, 0]])
    assert [p["label"] for p in v1] == labels["data"]
    assert [s for p in v1 for s in p["scores"]] == pytest.approx(scores["data"], abs=1e-5)


async def test_identical_requests_get_identical_bodies(start_model: StartModel, http: aiohttp.ClientSession) -> None:
    url = await start_model()
    for path, body in [("/v2/models/fraud/infer", V2_BODY), ("/v1/models/fraud:predict", {"instances": BATCH})]:
        first, second = [await call(http, "POST", url + path, body) for _ in range(2)]
        assert first == second


async def test_metadata_and_health(start_model: StartModel, http: aiohttp.ClientSession) -> None:
    url = await start_model(name="churn", version="v3")
    assert await call(http, "GET", url + "/health") == (200, {"status": "ok"})
    status, v1 = await call(http, "GET", url + "/v1/models/churn")
    assert status == 200 and v1["ready"] is True and v1["version"] == "v3"
    status, v2 = await call(http, "GET", url + "/v2/models/churn")
    assert status == 200 and v2["versions"] == ["v3"] and v2["inputs"][0]["shape"] == [-1, 4]
    assert await call(http, "GET", url + "/v2/models/churn/ready") == (200, {"name": "churn", "ready": True})


def test_v1_and_v2_models_agree_mostly() -> None:
    share = agreement(load("v1"), load("v2"), n=20_000)
    assert 0.95 <= share <= 0.99
    assert agreement(load("v2"), load("v7"), n=1000) == 1.0  # every non-v1 version is the same candidate


async def test_v1_and_v2_servers_disagree_on_a_few_of_a_fixed_batch(start_model: StartModel, http: aiohttp.ClientSession) -> None:
    one, two = await start_model(version="v1"), await start_model(version="v2")
    labels_1 = [p["label"] for p in await predict(http, one, BATCH)]
    labels_2 = [p["label"] for p in await predict(http, two, BATCH)]
    same = sum(a == b for a, b in zip(labels_1, labels_2, strict=True)) / len(BATCH)
    assert 0.9 <= same < 1.0


BAD_PREDICT = [
    ("/v1/models/fraud:predict", b"{not json", "not valid JSON"),
    ("/v1/models/fraud:predict", b"", "not valid JSON"),
    ("/v1/models/fraud:predict", b"[" * 100_000, "not valid JSON"),
    ("/v1/models/fraud:predict", b"{}", '"instances"'),
    ("/v1/models/fraud:predict", b'{"instances": []}', '"instances"'),
    ("/v1/models/fraud:predict", b'{"instances": [[1, 2, 3]]}', "instances[0]"),
    ("/v1/models/fraud:predict", b'{"instances": [[1, 2, 3, 4], [1, 2, "3", 4]]}', "instances[1][2]"),
    ("/v1/models/fraud:predict", b'{"instances": [[1, 2, true, 4]]}', "instances[0][2]"),
    ("/v1/models/fraud:predict", b'{"instances": [[1, 2, NaN, 4]]}', "instances[0][2]"),
    ("/v1/models/fraud:predict", b'{"instances": [{"feats": [1, 2, 3, 4]}]}', "instances[0]"),
    ("/v2/models/fraud/infer", b'{"inputs": []}', '"inputs"'),
    ("/v2/models/fraud/infer", b'{"inputs": [{"name": "x", "shape": [2, 3], "datatype": "FP32", "data": [1, 2, 3, 4, 5, 6]}]}', "shape"),
    ("/v2/models/fraud/infer", b'{"inputs": [{"name": "x", "shape": [2, 4], "datatype": "FP32", "data": [1, 2, 3]}]}', "holds 3 numbers"),
    ("/v2/models/fraud/infer", b'{"inputs": [{"name": "x", "shape": [1, 4], "datatype": "BYTES", "data": [1, 2, 3, 4]}]}', "datatype"),
    ("/v2/models/fraud/infer", b'{"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, "a", 4]}]}', "'a'"),
    ("/v2/models/fraud/infer", b'{"inputs": [{"shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}', "name"),
    ("/v2/models/fraud/infer", b'{"id": 5, "inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}', '"id"'),
]


@pytest.mark.parametrize(("path", "raw", "fragment"), BAD_PREDICT)
async def test_bad_predict_requests_get_400(start_model: StartModel, http: aiohttp.ClientSession, path: str, raw: bytes, fragment: str) -> None:
    url = await start_model(error_rate=1.0)  # a bad request is rejected before any injected failure
    status, body = await call(http, "POST", url + path, raw=raw)
    assert status == 400
    assert fragment in body["error"]


BAD_TEXT = [
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]}, '"model"'),
    ("/v1/chat/completions", {"model": "fraud", "messages": []}, '"messages"'),
    ("/v1/chat/completions", {"model": "fraud", "messages": [{"role": "user"}]}, "messages[0]"),
    ("/v1/chat/completions", {"model": "fraud", "messages": [{"role": "user", "content": "x"}], "stream": "yes"}, '"stream"'),
    ("/v1/completions", {"model": "fraud", "prompt": 5}, '"prompt"'),
    ("/v1/completions", {"model": "fraud", "prompt": "x", "max_tokens": 0}, '"max_tokens"'),
]


@pytest.mark.parametrize(("path", "body", "fragment"), BAD_TEXT)
async def test_bad_completion_requests_get_openai_400(start_model: StartModel, http: aiohttp.ClientSession, path: str, body: object, fragment: str) -> None:
    url = await start_model()
    status, answer = await call(http, "POST", url + path, body)
    assert status == 400
    assert fragment in answer["error"]["message"] and answer["error"]["type"] == "invalid_request_error"


async def test_unknown_model_path_and_method(start_model: StartModel, http: aiohttp.ClientSession) -> None:
    url = await start_model()
    for method, path in [("POST", "/v1/models/other:predict"), ("POST", "/v2/models/other/infer"),
                         ("GET", "/v1/models/other"), ("GET", "/v2/models/other"), ("GET", "/nowhere")]:
        status, body = await call(http, method, url + path, V2_BODY)
        assert status == 404 and isinstance(body["error"], str), path
    status, body = await call(http, "POST", url + "/v1/completions", {"model": "other", "prompt": "x"})
    assert status == 404 and body["error"]["code"] == "model_not_found"
    async with http.get(url + "/v1/models/fraud:predict") as resp:
        assert resp.status == 405 and resp.headers["Allow"] == "POST"
        assert "Method Not Allowed" in (await resp.json())["error"]


# -- model_server: knobs and control ---------------------------------------------------------

async def test_error_rate(start_model: StartModel, http: aiohttp.ClientSession) -> None:
    url = await start_model(error_rate=1.0)
    status, body = await call(http, "POST", url + "/v1/models/fraud:predict", {"instances": [[1, 2, 3, 4]]})
    assert (status, body) == (500, {"error": "injected failure (error_rate)"})
    await call(http, "POST", url + "/-/control", {"error_rate": 0.5})
    statuses = [(await call(http, "POST", url + "/v2/models/fraud/infer", V2_BODY))[0] for _ in range(40)]
    assert 0 < statuses.count(500) < 40 and set(statuses) == {200, 500}
    assert (await call(http, "GET", url + "/health"))[0] == 200  # health is never failed on purpose


async def test_latency_delays_answers(start_model: StartModel, http: aiohttp.ClientSession) -> None:
    url = await start_model(latency_ms=400, jitter_ms=10)
    body = json.dumps({"instances": [[1, 2, 3, 4]]})
    with pytest.raises(asyncio.TimeoutError):
        async with http.post(url + "/v1/models/fraud:predict", data=body, timeout=aiohttp.ClientTimeout(total=0.05)):
            pass
    async with http.post(url + "/v1/models/fraud:predict", data=body, timeout=aiohttp.ClientTimeout(total=10)) as resp:
        assert resp.status == 200


async def test_control_reads_and_updates_all_or_nothing(start_model: StartModel, http: aiohttp.ClientSession) -> None:
    url = await start_model(latency_ms=1, noise_field="nonce")
    status, knobs = await call(http, "GET", url + "/-/control")
    assert status == 200
    assert knobs == {"latency_ms": 1.0, "jitter_ms": 0.0, "error_rate": 0.0, "perturb": 0.0,
                     "noise_field": "nonce", "shift": 0.0, "stream_delay_ms": 0.0, "ttft_ms": 0.0,
                     "reject_rate": 0.0, "retry_after_s": 1.0, "judge_percent": 50.0, "judge_garbage": 0.0}
    status, knobs = await call(http, "POST", url + "/-/control", {"latency_ms": 0, "noise_field": None, "shift": 1.5})
    assert status == 200 and (knobs["latency_ms"], knobs["noise_field"], knobs["shift"]) == (0.0, "none", 1.5)
    status, body = await call(http, "POST", url + "/-/control", {"shift": 0, "error_rate": 2})
    assert status == 400 and "error_rate" in body["error"]
    assert (await call(http, "GET", url + "/-/control"))[1]["shift"] == 1.5  # the valid half was not applied


@pytest.mark.parametrize(("raw", "fragment"), [
    (b"[1, 2]", "JSON object"), (b"nope", "not valid JSON"), (b'{"colour": 1}', "unknown knob(s) colour"),
    (b'{"latency_ms": -1}', "latency_ms"), (b'{"latency_ms": true}', "latency_ms: must be a number"),
    (b'{"error_rate": 1.01}', "error_rate"), (b'{"shift": "3"}', "shift"), (b'{"perturb": Infinity}', "perturb"),
    (b'{"noise_field": "two words"}', "noise_field"), (b'{"noise_field": 3}', "noise_field"),
])
async def test_control_rejects_bad_input(start_model: StartModel, http: aiohttp.ClientSession, raw: bytes, fragment: str) -> None:
    url = await start_model()
    status, body = await call(http, "POST", url + "/-/control", raw=raw)
    assert status == 400 and fragment in body["error"]


def test_bad_options_fail_at_build() -> None:
    with pytest.raises(ValueError, match="error_rate"):
        build_app(ServerOptions(error_rate=3))


@pytest.mark.parametrize("field", ["scores", "request_nonce"])
async def test_noise_field_changes_only_that_field(start_model: StartModel, http: aiohttp.ClientSession, field: str) -> None:
    url = await start_model(noise_field=field)
    first, second = await predict(http, url, BATCH[:20]), await predict(http, url, BATCH[:20])
    assert all(a[field] != b[field] for a, b in zip(first, second, strict=True))
    for a, b in zip(first, second, strict=True):
        assert {k: v for k, v in a.items() if k != field} == {k: v for k, v in b.items() if k != field}
    if field == "scores":
        assert np.allclose([p["scores"] for p in first], [p["scores"] for p in second], atol=0.01)


async def test_noise_field_in_v2_is_an_extra_output(start_model: StartModel, http: aiohttp.ClientSession) -> None:
    url = await start_model(noise_field="request_nonce")
    first, second = [(await call(http, "POST", url + "/v2/models/fraud/infer", V2_BODY))[1] for _ in range(2)]
    assert [o["name"] for o in first["outputs"]] == ["scores", "label", "request_nonce"]
    assert first["outputs"][:2] == second["outputs"][:2] and first["outputs"][2] != second["outputs"][2]


async def test_perturb_makes_answers_disagree(start_model: StartModel, http: aiohttp.ClientSession) -> None:
    url = await start_model(perturb=2.0)
    first, second = await predict(http, url, BATCH), await predict(http, url, BATCH)
    differ = sum(a["label"] != b["label"] for a, b in zip(first, second, strict=True))
    assert 0 < differ < len(BATCH)


async def test_shift_moves_the_label_distribution(start_model: StartModel, http: aiohttp.ClientSession) -> None:
    url = await start_model()

    async def legit_share() -> float:
        return float(sum(p["label"] == "legit" for p in await predict(http, url, BATCH)) / len(BATCH))

    before = await legit_share()
    await call(http, "POST", url + "/-/control", {"shift": 3})
    after = await legit_share()
    assert before < 0.5 and after > before + 0.3


async def test_stats_count_what_arrived(start_model: StartModel, http: aiohttp.ClientSession) -> None:
    url = await start_model()
    await call(http, "GET", url + "/-/control")
    assert (await call(http, "GET", url + "/-/stats"))[1]["requests"] == 0  # /-/ paths are not counted
    await predict(http, url, [[1, 2, 3, 4]])
    async with http.post(url + "/v2/models/fraud/infer?trace=1", json=V2_BODY,
                         headers={"X-Canary": "yes", "X-Multi": "a"}) as resp:
        assert resp.status == 200
    _, stats = await call(http, "GET", url + "/-/stats")
    assert stats["requests"] == 2
    assert stats["by_path"] == {"/v1/models/fraud:predict": 1, "/v2/models/fraud/infer": 1}
    assert (stats["last_method"], stats["last_path"]) == ("POST", "/v2/models/fraud/infer?trace=1")
    assert stats["last_headers"]["x-canary"] == "yes" and stats["last_headers"]["x-multi"] == "a"
    _, stats = await call(http, "DELETE", url + "/-/stats")
    assert (stats["requests"], stats["by_path"], stats["last_headers"]) == (0, {}, {})


# -- model_server: OpenAI-style text ---------------------------------------------------------

async def test_chat_completion(start_model: StartModel, http: aiohttp.ClientSession) -> None:
    url = await start_model()
    request = {"model": "fraud", "messages": [{"role": "user", "content": "Is this card stolen?"}]}
    status, body = await call(http, "POST", url + "/v1/chat/completions", request)
    assert status == 200 and body["object"] == "chat.completion" and body["model"] == "fraud"
    message = body["choices"][0]["message"]
    assert message["role"] == "assistant" and message["content"] in textgen.SENTENCES
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["usage"]["completion_tokens"] == len(message["content"].split())
    assert (await call(http, "POST", url + "/v1/chat/completions", request))[1]["id"] == body["id"]


async def test_text_completion_honours_max_tokens(start_model: StartModel, http: aiohttp.ClientSession) -> None:
    url = await start_model()
    status, body = await call(http, "POST", url + "/v1/completions", {"model": "fraud", "prompt": "hi", "max_tokens": 3})
    assert status == 200 and body["object"] == "text_completion"
    choice = body["choices"][0]
    assert len(choice["text"].split()) == 3 and choice["finish_reason"] == "length"


def test_v2_text_differs_in_one_word_for_a_few_prompts() -> None:
    assert all(any(w in textgen.SYNONYMS for w in s.split(" ")) for s in textgen.SENTENCES)
    pairs = [(textgen.reply(f"prompt {i}", "v1"), textgen.reply(f"prompt {i}", "v2")) for i in range(400)]
    changed = [(a, b) for a, b in pairs if a != b]
    assert 0 < len(changed) < 0.25 * len(pairs)
    assert all(sum(x != y for x, y in zip(a, b, strict=True)) == 1 for a, b in changed)


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions"])
async def test_stream_is_one_http_chunk_per_event(start_model: StartModel, http: aiohttp.ClientSession, path: str) -> None:
    url = await start_model(stream_delay_ms=2)
    chat = path.endswith("chat/completions")
    request: dict[str, Any] = {"model": "fraud", "messages": [{"role": "user", "content": "hello"}]} if chat \
        else {"model": "fraud", "prompt": "hello"}
    _, whole = await call(http, "POST", url + path, request)
    events, current = [], b""
    async with http.post(url + path, json={**request, "stream": True}) as resp:
        assert resp.status == 200 and resp.content_type == "text/event-stream"
        async for data, end_of_chunk in resp.content.iter_chunks():
            current += data
            if end_of_chunk:
                events.append(current)
                current = b""
    assert current == b""
    assert all(re.fullmatch(rb"data: [^\n]+\n\n", e) for e in events)
    assert events[-1] == b"data: [DONE]\n\n"
    chunks = [json.loads(e[len(b"data: "):]) for e in events[:-1]]
    pieces = [c["choices"][0]["delta"].get("content", "") if chat else c["choices"][0]["text"] for c in chunks]
    expected = whole["choices"][0]["message"]["content"] if chat else whole["choices"][0]["text"]
    assert len(chunks) == len(expected.split()) + 1 and "".join(pieces) == expected
    assert [c["choices"][0]["finish_reason"] for c in chunks[-2:]] == [None, "stop"]


# -- fast_server -----------------------------------------------------------------------------

FastStart = Callable[..., Awaitable[int]]


@pytest.fixture
async def start_fast() -> AsyncIterator[FastStart]:
    running: list[tuple[asyncio.Server, set[fast_server.FastProtocol]]] = []

    async def start(latency_ms: float = 0.0) -> int:
        server, connections = await fast_server.start("127.0.0.1", 0, latency_ms)
        running.append((server, connections))
        port: int = server.sockets[0].getsockname()[1]
        return port

    yield start
    for server, connections in running:
        await fast_server.stop(server, connections)


async def read_response(reader: asyncio.StreamReader, head_request: bool = False) -> tuple[int, dict[str, str], bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    status_line, *lines = head.decode().split("\r\n")[:-2]
    headers = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines)}
    body = b"" if head_request else await reader.readexactly(int(headers["content-length"]))
    return int(status_line.split()[1]), headers, body


async def exchange(port: int, data: bytes, heads: list[bool]) -> tuple[list[tuple[int, dict[str, str], bytes]], bytes]:
    """Send `data`, read one response per entry of `heads` (True: answer to HEAD), then what follows."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        answers = [await read_response(reader, head) for head in heads]
        async with asyncio.timeout(2):
            rest = await reader.read() if not answers or answers[-1][1]["connection"] == "close" else b""
        return answers, rest
    finally:
        writer.close()
        await writer.wait_closed()


async def test_fast_server_answers_pipelined_requests_in_order(start_fast: FastStart) -> None:
    port = await start_fast()
    data = (b"POST /v1/models/m/predict HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n\r\n{\"a\": [1]}\n"
            b"PUT /other HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n10\r\n" + b"x" * 16
            + b"\r\n0\r\n\r\n"
            b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n"
            b"GET /last HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            b"GET /never HTTP/1.1\r\nHost: x\r\n\r\n")
    answers, rest = await exchange(port, data, [False, False, True, False])
    assert [a[0] for a in answers] == [200] * 4
    assert [a[1]["connection"] for a in answers] == ["keep-alive"] * 3 + ["close"]
    assert answers[0][2] == fast_server.BODY and answers[2][2] == b"" and answers[2][1]["content-length"] == "60"
    assert rest == b""  # closed after the `Connection: close` answer; /never was not answered


async def test_fast_server_skips_a_large_chunked_body(start_fast: FastStart) -> None:
    port = await start_fast()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"POST /big HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
    for _ in range(64):
        writer.write(b"8000\r\n" + b"z" * 0x8000 + b"\r\n")
        await writer.drain()
    writer.write(b"0\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
    answers = [await read_response(reader) for _ in range(2)]
    writer.close()
    await writer.wait_closed()
    assert [(status, body) for status, _, body in answers] == [(200, fast_server.BODY)] * 2


@pytest.mark.parametrize("data", [b"NOT HTTP AT ALL\r\n\r\n", b"GET / HTTP/1.1\r\nContent-Length: x\r\n\r\n"])
async def test_fast_server_rejects_malformed_requests(start_fast: FastStart, data: bytes) -> None:
    port = await start_fast()
    [(status, headers, _)], rest = await exchange(port, data, [False])
    assert status == 400 and headers["connection"] == "close" and rest == b""


async def test_fast_server_http10_closes(start_fast: FastStart) -> None:
    port = await start_fast()
    [(status, headers, body)], rest = await exchange(port, b"GET / HTTP/1.0\r\n\r\n", [False])
    assert (status, headers["connection"], body, rest) == (200, "close", fast_server.BODY, b"")


async def test_fast_server_delayed_answers_keep_their_order(start_fast: FastStart) -> None:
    port = await start_fast(latency_ms=30)
    one = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
    answers, rest = await exchange(port, one * 3 + b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n", [False] * 4)
    assert [a[1]["connection"] for a in answers] == ["keep-alive"] * 3 + ["close"] and rest == b""


async def test_fast_server_keeps_alive_for_a_real_client(start_fast: FastStart) -> None:
    port = await start_fast()
    opened: list[object] = []
    trace = aiohttp.TraceConfig()

    async def on_open(session: aiohttp.ClientSession, context: object, params: object) -> None:
        opened.append(params)

    trace.on_connection_create_end.append(on_open)
    async with aiohttp.ClientSession(trace_configs=[trace]) as http:
        for _ in range(20):
            async with http.post(f"http://127.0.0.1:{port}/v1/models/m/predict", json={"instances": [[1, 2, 3, 4]]}) as resp:
                assert resp.status == 200 and (await resp.json())["predictions"][0]["label"] == "legit"
    assert len(opened) == 1  # every request reused the one keep-alive connection


# -- the command lines -----------------------------------------------------------------------

@pytest.mark.parametrize(("module", "args", "ready"), [
    ("backends.model_server", ["--name", "fraud", "--version", "v2"], r"model_server fraud/v2 listening on http://127\.0\.0\.1:(\d+)"),
    ("backends.fast_server", [], r"fast_server listening on http://127\.0\.0\.1:(\d+)"),
])
async def test_cli_serves_and_stops_on_sigterm(http: aiohttp.ClientSession, module: str, args: list[str], ready: str) -> None:
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", module, "--port", "0", *args, cwd=ROOT,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        assert proc.stdout is not None
        async with asyncio.timeout(10):
            line = (await proc.stdout.readline()).decode()
        match = re.fullmatch(ready + r"\n", line)
        assert match, line
        async with http.get(f"http://127.0.0.1:{match[1]}/health") as resp:
            assert resp.status == 200
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(10):
            _, err = await proc.communicate()
        assert proc.returncode == 0, err
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_cli_rejects_bad_options() -> None:
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "backends.model_server", "--error-rate", "2",
                                                cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    _, err = await proc.communicate()
    assert proc.returncode == 2 and b"error_rate" in err
