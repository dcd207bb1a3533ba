"""Cookie parsing for sticky keys and overrides: one cookie, linear time, http.cookies' reading of values."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import pytest

from router.dataplane.policy import cookie_value
from tests.helpers import BackendFactory, RouterFactory, base_config

# CVE-2024-7592: http.cookies takes seconds on this before Python 3.11.10 / 3.12.6.
BACKSLASHES = 65_000
EVIL = b'uid="' + b"\\" * BACKSLASHES + b'"'
STALLERS = 8  # each stalled the loop ~6 s before the fix


async def test_backslash_cookie_does_not_stall_other_clients(
        make_router: RouterFactory, make_backend: BackendFactory, tmp_path: Path) -> None:
    urls = {"v1": (await make_backend("v1")).url, "v2": (await make_backend("v2")).url}
    route = {"name": "m", "match": {"path_prefix": "/m"}, "primary": "v1", "candidate": "v2",
             "split": {"candidate_percent": 50, "sticky": "cookie:uid"}}
    cfg = base_config(tmp_path, urls, [route])
    cfg["limits"]["max_header_size"] = "128KiB"
    r = await make_router(cfg)
    host, port = r.host_port
    writers = []
    try:
        for _ in range(STALLERS):
            _, writer = await asyncio.open_connection(host, port)
            writer.write(b"GET /m HTTP/1.1\r\nHost: x\r\nCookie: " + EVIL + b"\r\n\r\n")
            await writer.drain()
            writers.append(writer)
        async with aiohttp.ClientSession() as s:
            try:
                # A generous deadline: the fixed router answers in milliseconds, the old one in ~50 s.
                async with asyncio.timeout(10), s.get(r.url + "/m") as resp:
                    status = resp.status
            except TimeoutError:
                pytest.fail(f"a plain request waited over 10 s behind {STALLERS} backslash-laden cookies")
    finally:
        for writer in writers:
            writer.close()

    assert status == 200


@pytest.mark.parametrize(("header", "name", "expected"), [
    ("pin=old; a=b", "pin", "old"),
    ("pin=old; a=b", "a", "b"),
    (" a = 1 ;pin= x ", "pin", "x"),
    ("pin=first; pin=second", "pin", "first"),          # RFC 6265: the most specific comes first
    ('a="x\\"y"', "a", 'x"y'),                           # quoted: quotes and escapes go, as http.cookies
    ('a="o\\154d"', "a", "old"),                         # octal escape, as http.cookies
    ('uid="' + "\\\\" * 3 + '"', "uid", "\\" * 3),
    ('garbage="unterminated', "garbage", '"unterminated'),
    ("pin", "pin", None),                                # no '=': no cookie
    ("xpin=1; pinx=2", "pin", None),                     # names match exactly
    ("", "pin", None),
    ("a=b=c", "a", "b=c"),
])
def test_cookie_value_reads_one_cookie(header: str, name: str, expected: str | None) -> None:
    assert cookie_value(header, name) == expected
