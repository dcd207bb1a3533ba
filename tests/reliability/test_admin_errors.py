"""Hostile input to the admin API gets the documented JSON error with a 4xx, never a plain-text 500."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import aiohttp

from tests.helpers import TOKEN, RouterFactory, RouterProcess, base_config, free_port, raw_request

AUTH = {"Authorization": f"Bearer {TOKEN}"}
NESTED = b"[" * 100_000 + b"]" * 100_000  # well under the 1 MiB body limit
HUGE_INT = b"9" * 5000  # beyond Python's 4,300-digit int conversion limit


def config(tmp_path: Path) -> dict[str, Any]:
    routes = [{"name": "m", "match": {"path_prefix": "/m"}, "primary": "v1", "candidate": "v2"}]
    backends = {"v1": f"http://127.0.0.1:{free_port()}", "v2": f"http://127.0.0.1:{free_port()}"}
    return base_config(tmp_path, backends, routes, monitoring={"feedback": {"retention": "1h"}})


async def post(r: RouterProcess, path: str, body: bytes) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as s, s.post(r.admin + path, data=io.BytesIO(body), headers=AUTH) as resp:
        return resp.status, json.loads(await resp.text())


def assert_json_error(status: int, body: Any, expected: int) -> None:
    assert status == expected, (status, body)
    assert body["error"]["status"] == expected, body
    assert isinstance(body["error"]["message"], str) and "Traceback" not in body["error"]["message"], body


async def test_non_utf8_bearer_token_gets_json_401(make_router: RouterFactory, tmp_path: Path) -> None:
    r = await make_router(config(tmp_path))
    host, port = r.config["admin"]["listen"].rsplit(":", 1)
    request = (b"POST /-/reload HTTP/1.1\r\nHost: " + host.encode() + b"\r\nAuthorization: Bearer \xff\r\n"
               b"Content-Length: 0\r\nConnection: close\r\n\r\n")

    raw = await raw_request(host, int(port), request)

    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 401 "), raw[:300]
    assert_json_error(401, json.loads(body), 401)


async def test_deeply_nested_split_body_gets_json_400(make_router: RouterFactory, tmp_path: Path) -> None:
    r = await make_router(config(tmp_path))

    status, body = await post(r, "/-/routes/m/split", NESTED)

    assert_json_error(status, body, 400)


async def test_deeply_nested_feedback_body_gets_json_400(make_router: RouterFactory, tmp_path: Path) -> None:
    r = await make_router(config(tmp_path))

    status, body = await post(r, "/-/feedback", NESTED)

    assert_json_error(status, body, 400)


async def test_split_with_a_5000_digit_integer_gets_json_400(make_router: RouterFactory, tmp_path: Path) -> None:
    r = await make_router(config(tmp_path))

    status, body = await post(r, "/-/routes/m/split", b'{"candidate_percent": ' + HUGE_INT + b"}")

    assert_json_error(status, body, 400)


async def test_feedback_with_a_5000_digit_integer_is_an_invalid_item(
        make_router: RouterFactory, tmp_path: Path) -> None:
    r = await make_router(config(tmp_path))

    status, body = await post(r, "/-/feedback", b'{"request_id": "a", "value": ' + HUGE_INT + b"}")

    assert status == 422, body
    assert body["items"][0]["outcome"].startswith("invalid: value must be a finite number"), body


async def test_feedback_value_beyond_float_range_spoils_only_its_item(
        make_router: RouterFactory, tmp_path: Path) -> None:
    r = await make_router(config(tmp_path))
    batch = b'[{"request_id": "big", "value": 1' + b"0" * 400 + b'}, {"request_id": "other", "label": "x"}]'

    status, body = await post(r, "/-/feedback", batch)

    assert status == 422, body
    assert [item["request_id"] for item in body["items"]] == ["big", "other"]
    assert body["items"][0]["outcome"].startswith("invalid:"), body
    assert body["items"][1]["outcome"] == "unknown_request_id", body


async def test_unknown_admin_path_gets_json_404(make_router: RouterFactory, tmp_path: Path) -> None:
    r = await make_router(config(tmp_path))

    async with aiohttp.ClientSession() as s, s.get(r.admin + "/-/nothing-here") as resp:
        status, body = resp.status, json.loads(await resp.text())

    assert_json_error(status, body, 404)


async def test_wrong_method_gets_json_405_with_allow(make_router: RouterFactory, tmp_path: Path) -> None:
    r = await make_router(config(tmp_path))

    async with aiohttp.ClientSession() as s, s.delete(r.admin + "/-/status", headers=AUTH) as resp:
        status, body, allow = resp.status, json.loads(await resp.text()), resp.headers.get("Allow")

    assert_json_error(status, body, 405)
    assert allow is not None and "GET" in allow


async def test_body_over_the_admin_limit_gets_json_413(make_router: RouterFactory, tmp_path: Path) -> None:
    r = await make_router(config(tmp_path))

    status, body = await post(r, "/-/routes/m/split", b" " * (2 * 1024 * 1024))

    assert_json_error(status, body, 413)
