"""The common HTTP/1.1 message read without llhttp's per-field callbacks, or declined.

llhttp is strict and fast, but through httptools every field it finds is a call from C into
Python (about 1,000 instructions each: nine or so for a request and as many for its response,
a fifth of what the router spends on a request). Most messages a proxy carries are small,
keep-alive, Content-Length framed and arrive in one read. For exactly those, `_headscan.c`
checks the whole message in one pass and hands back its parts; the connection then replays
the very callbacks llhttp would have made, as native calls.

The rule that keeps the parser as strict as llhttp: this reads a *subset* of what llhttp
accepts, and gives the same fields for it. Anything else returns None, and the caller feeds the
read to llhttp as before. Declined: another method (CONNECT, TRACE, WebDAV) or version than
HTTP/1.1; a target with a byte outside RFC 3986's path and query characters; a header name
that is not a token, a value byte that is a control or DEL, a bare CR or LF; Transfer-Encoding,
Upgrade, Expect, a Connection header other than keep-alive; a repeated, empty, signed or
15-digit-plus Content-Length; a response without one, or with status 1xx, 204 or 304; a body
not wholly in this read; any byte after the message. tests/test_fastparse.py checks, with
hypothesis, that for any input these either decline or give what llhttp gives.

Why C and not mypyc or `re`: both were tried. `re` took 20,000 instructions a message, more
than llhttp with its callbacks; CPython's find/count/translate scans, about 10 a byte over five
passes, came to as much. One table-driven pass in C takes a few hundred.

Without the compiled extension (the pure-Python package) every read goes to llhttp.
"""

from __future__ import annotations

from collections.abc import Callable

# method, target, header names, header values (as llhttp reports them), body, head size
RequestFields = tuple[bytes, bytes, list[bytes], list[bytes], bytes, int]
# status, header names, header values, body, head size
ResponseFields = tuple[int, list[bytes], list[bytes], bytes, int]


def _decline_request(data: bytes) -> RequestFields | None:
    return None


def _decline_response(data: bytes) -> ResponseFields | None:
    return None


read_request: Callable[[bytes], RequestFields | None]
read_response: Callable[[bytes], ResponseFields | None]
try:
    from router.dataplane import _headscan
except ImportError:  # not built: llhttp reads everything, as before this module existed
    AVAILABLE = False
    read_request = _decline_request
    read_response = _decline_response
else:
    AVAILABLE = True
    read_request = _headscan.read_request
    read_response = _headscan.read_response
