"""The prediction log: sampling, rotation, redaction, truncation, bounded queue, flush on close."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from router.analysis.compare import parse_path
from router.observe.predlog import PredictionLog, PredictionLogConfig, record, redact, sample_point


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def rec(i: int, request_body: bytes | None = None, response_body: bytes | None = None,
        shadow: dict[str, Any] | None = None) -> dict[str, Any]:
    return record(f"req-{i}", 1_700_000_000.0 + i, "fraud", "v1", 200, 0.012, request_body, response_body, shadow)


async def write_all(config: PredictionLogConfig, records: list[dict[str, Any]]) -> PredictionLog:
    plog = PredictionLog(config)
    plog.start()
    for r in records:
        assert plog.offer(r)
    await plog.close()
    return plog


async def test_a_record_is_one_json_line(tmp_path: Path) -> None:
    path = tmp_path / "predictions.jsonl"
    plog = await write_all(PredictionLogConfig(path), [rec(1, b'{"x": 1}', b'{"y": 2}')])
    [line] = lines(path)
    assert line == {"request_id": "req-1", "time": "2023-11-14T22:13:21.000+00:00", "route": "fraud",
                    "backend": "v1", "status": 200, "latency_s": 0.012}
    assert plog.counters()["written"] == 1


@pytest.mark.parametrize("rate", [0.0, 0.1, 0.5, 1.0])
def test_sampling_rate_is_accurate_and_deterministic(tmp_path: Path, rate: float) -> None:
    plog = PredictionLog(PredictionLogConfig(tmp_path / "p.jsonl", sample_rate=rate, queue_size=100_000))
    n = 20_000
    kept = sum(plog.offer(rec(i)) for i in range(n))
    # Binomial sd at n=20,000 is at most 0.0035; 4 sd either side.
    assert abs(kept / n - rate) <= 0.015
    assert plog.counters()["sampled_out"] == n - kept
    assert all(plog.wants(f"req-{i}") == (sample_point(f"req-{i}") < rate) for i in range(100))
    assert plog.wants(b"req-7") == plog.wants("req-7")  # bytes and str ids agree


async def test_shadow_is_joined_in_one_record(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    shadow = {"backend": "v2", "status": 200, "latency_s": 0.02, "response_body": b'{"label": "b"}', "error": None}
    await write_all(PredictionLogConfig(path, include_bodies=True), [rec(1, b'{"x": 1}', b'{"label": "a"}', shadow)])
    [line] = lines(path)
    assert line["response_body"] == {"label": "a"}
    assert line["shadow"] == {"backend": "v2", "status": 200, "latency_s": 0.02, "response_body": {"label": "b"},
                              "error": None}


async def test_rotation_by_size_keeps_n_files(tmp_path: Path) -> None:
    path = tmp_path / "predictions.jsonl"
    config = PredictionLogConfig(path, max_file_bytes=400, keep_files=2)
    plog = await write_all(config, [rec(i) for i in range(30)])
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["predictions.jsonl", "predictions.jsonl.1", "predictions.jsonl.2"]
    assert all(p.stat().st_size <= 400 for p in tmp_path.iterdir())
    assert plog.counters()["rotations"] >= 3
    # The newest lines are in the live file, the next older in .1, with no gap between them.
    newest = lines(path)
    older = lines(tmp_path / "predictions.jsonl.1")
    assert newest[-1]["request_id"] == "req-29"
    assert int(older[-1]["request_id"][4:]) + 1 == int(newest[0]["request_id"][4:])


async def test_rotation_appends_to_an_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    await write_all(PredictionLogConfig(path), [rec(1)])
    await write_all(PredictionLogConfig(path), [rec(2)])
    assert [r["request_id"] for r in lines(path)] == ["req-1", "req-2"]


@pytest.mark.parametrize(("paths", "doc", "expected"), [
    (("instances",), {"instances": [1, 2], "k": 1}, {"instances": "[REDACTED]", "k": 1}),
    (("$.user.email",), {"user": {"email": "a@b", "id": 3}}, {"user": {"email": "[REDACTED]", "id": 3}}),
    (("$.rows[*].ssn",), {"rows": [{"ssn": 1, "x": 1}, {"ssn": 2}, 5]},
     {"rows": [{"ssn": "[REDACTED]", "x": 1}, {"ssn": "[REDACTED]"}, 5]}),
    (("$.rows[*]",), {"rows": [1, 2]}, {"rows": ["[REDACTED]", "[REDACTED]"]}),
    (("$.a[1]",), {"a": [1, 2, 3]}, {"a": [1, "[REDACTED]", 3]}),
    (("$.missing.x", "$.a.b"), {"a": 1}, {"a": 1}),  # absent paths and scalars in the way change nothing
    (("$['odd key']",), {"odd key": 1}, {"odd key": "[REDACTED]"}),
])
async def test_redaction(tmp_path: Path, paths: tuple[str, ...], doc: Any, expected: Any) -> None:
    path = tmp_path / "p.jsonl"
    body = json.dumps(doc).encode()
    await write_all(PredictionLogConfig(path, include_bodies=True, redact=paths), [rec(1, body, body)])
    [line] = lines(path)
    assert line["request_body"] == expected
    assert line["response_body"] == expected


def test_redacting_the_root_replaces_everything() -> None:
    assert redact({"a": 1}, parse_path("$")) == "[REDACTED]"


def test_bad_redaction_path_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="recursive descent"):
        PredictionLogConfig(tmp_path / "p", redact=("$..email",))
    with pytest.raises(ValueError, match="sample_rate"):
        PredictionLogConfig(tmp_path / "p", sample_rate=1.5)


async def test_truncation(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    big_json = json.dumps({"v": "é" * 100}, ensure_ascii=False).encode()  # 2-byte characters
    text = b"plain text " * 20
    await write_all(PredictionLogConfig(path, include_bodies=True, max_body_bytes=50),
                    [rec(1, big_json, text), rec(2, b'{"small": 1}', b"ok")])
    first, second = lines(path)
    assert first["request_body_truncated"] is True
    assert len(first["request_body"].encode()) <= 50 and first["request_body"].startswith('{"v": "éé')
    assert first["response_body"] == (text[:50]).decode() and first["response_body_truncated"] is True
    assert second["request_body"] == {"small": 1} and second["response_body"] == "ok"
    assert "request_body_truncated" not in second


async def test_redacted_body_is_truncated_after_redaction(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    body = json.dumps({"secret": "s" * 500, "pad": "p" * 500}).encode()
    await write_all(PredictionLogConfig(path, include_bodies=True, max_body_bytes=30, redact=("secret",)),
                    [rec(1, body)])
    [line] = lines(path)
    assert line["request_body"].startswith('{"secret":"[REDACTED]"') and "sss" not in line["request_body"]


@pytest.mark.parametrize("body", [b"email=a@b.c&ssn=123", b"\xff\xfe garbage", b'{"email": "a@b.c", cut-off'])
async def test_non_json_body_with_redaction_never_leaks(tmp_path: Path, body: bytes) -> None:
    path = tmp_path / "p.jsonl"
    plog = await write_all(PredictionLogConfig(path, include_bodies=True, redact=("email",)), [rec(1, body, body)])
    raw = path.read_text()
    assert "a@b" not in raw and "123" not in raw and "garbage" not in raw
    [line] = lines(path)
    assert line["request_body_redacted"] == "not JSON" and "request_body" not in line
    assert line["response_body_redacted"] == "not JSON" and "response_body" not in line
    assert plog.counters()["bodies_withheld"] == 2


async def test_too_large_to_redact_is_withheld(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    body = json.dumps({"email": "a@b.c", "pad": "x" * 100}).encode()
    await write_all(PredictionLogConfig(path, include_bodies=True, redact=("email",), max_redact_bytes=64),
                    [rec(1, body)])
    [line] = lines(path)
    assert line["request_body_redacted"].startswith("too large to redact") and "a@b" not in path.read_text()


async def test_bodies_are_left_out_unless_asked_for(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    plog = PredictionLog(PredictionLogConfig(path))
    r = rec(1, b'{"x": 1}', b'{"y": 1}')
    assert plog.offer(r) and "request_body" not in r  # not even held in the queue
    await plog.close()
    assert "body" not in path.read_text()


async def test_full_queue_drops_and_counts(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    plog = PredictionLog(PredictionLogConfig(path, queue_size=3))  # not started: the writer is paused
    assert [plog.offer(rec(i)) for i in range(5)] == [True, True, True, False, False]
    assert plog.counters()["dropped_full"] == 2 and plog.queued == 3
    await plog.close()
    assert [r["request_id"] for r in lines(path)] == ["req-0", "req-1", "req-2"]
    assert not plog.offer(rec(9)) and plog.counters()["dropped_closed"] == 1


async def test_queue_is_bounded_in_body_bytes(tmp_path: Path) -> None:
    plog = PredictionLog(PredictionLogConfig(tmp_path / "p.jsonl", include_bodies=True, max_queue_bytes=250))
    assert [plog.offer(rec(i, b"x" * 100)) for i in range(3)] == [True, True, False]
    await plog.close()


async def test_close_flushes_everything(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    plog = PredictionLog(PredictionLogConfig(path, include_bodies=True))
    plog.start()
    for i in range(2500):  # more than one batch
        assert plog.offer(rec(i, b'{"x": 1}'))
    await plog.close()
    got = lines(path)
    assert len(got) == 2500 and got[-1]["request_id"] == "req-2499"
    assert plog.counters()["written"] == 2500 and plog.queued == 0


async def test_unwritable_path_counts_errors_and_keeps_going(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    plog = PredictionLog(PredictionLogConfig(blocker / "p.jsonl"))  # parent is a file: cannot open
    plog.start()
    assert plog.offer(rec(1))
    await plog.close()
    assert plog.counters()["write_errors"] == 1 and plog.counters()["written"] == 0
