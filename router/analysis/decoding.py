"""Undoing a response's Content-Encoding, for reading it (comparison, feedback, the prediction log).

The router relays the bytes a backend sent untouched; only the copies it reads are decoded. Model
servers compress larger responses when the client accepts it (MLServer gzips above 500 bytes, and
`requests` and `httpx` send `Accept-Encoding: gzip, deflate, br` by default), so without this most
real responses could not be read at all.

Every decoder stops at `limit` decoded bytes: a small body that expands beyond it (a decompression
bomb, or just a very large answer) raises `DecodeError("too_large")` after at most `limit + 1`
bytes of work, never building the whole output. Codings are undone in reverse order of listing,
as RFC 9110 section 8.4 says they were applied.
"""

from __future__ import annotations

import io
import zlib
from collections.abc import Callable

import brotli
import zstandard

CHUNK = 64 * 1024
REASONS = ("too_large", "unsupported_encoding", "corrupt")


class DecodeError(ValueError):
    """A body that cannot be decoded; `reason` is one of REASONS (bounded, for counters)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def codings(header: str | None) -> list[str]:
    """The codings listed in a Content-Encoding header, in the order applied; identity left out."""
    if not header:
        return []
    return [c for c in (part.strip().lower() for part in header.split(",")) if c and c != "identity"]


def decode(body: bytes, content_encoding: str | None, limit: int) -> bytes:
    """`body` with every listed coding undone; raises DecodeError when it cannot be, or when the
    decoded body would pass `limit` bytes."""
    for coding in reversed(codings(content_encoding)):
        decoder = _DECODERS.get(coding)
        if decoder is None:
            raise DecodeError("unsupported_encoding", f"Content-Encoding {coding!r} is not supported")
        body = decoder(body, limit)
    return body


def _zlib(wbits: int) -> Callable[[bytes, int], bytes]:
    def run(body: bytes, limit: int) -> bytes:
        d = zlib.decompressobj(wbits)
        try:
            out = d.decompress(body, limit + 1)
        except zlib.error as exc:
            raise DecodeError("corrupt", f"cannot decode: {exc}") from None
        _check_size(out, limit)
        if not d.eof:
            raise DecodeError("corrupt", "compressed data ends early")
        return out
    return run


_gzip = _zlib(16 + zlib.MAX_WBITS)
_zlib_wrapped = _zlib(zlib.MAX_WBITS)
_raw_deflate = _zlib(-zlib.MAX_WBITS)


def _deflate(body: bytes, limit: int) -> bytes:
    # "deflate" means zlib-wrapped (RFC 9110), but some servers send raw deflate: accept both.
    try:
        return _zlib_wrapped(body, limit)
    except DecodeError as exc:
        if exc.reason == "too_large":
            raise
        return _raw_deflate(body, limit)


def _brotli(body: bytes, limit: int) -> bytes:
    d = brotli.Decompressor()
    try:
        out = d.process(body, output_buffer_limit=limit + 1)
    except brotli.error as exc:
        raise DecodeError("corrupt", f"cannot decode brotli: {exc}") from None
    _check_size(out, limit)
    if not d.is_finished():
        # Stopped at the limit with output still pending, or the input ended early.
        if not d.can_accept_more_data():
            raise DecodeError("too_large", f"decodes to more than {limit} bytes")
        raise DecodeError("corrupt", "brotli data ends early")
    return bytes(out)


def _zstd(body: bytes, limit: int) -> bytes:
    try:
        with zstandard.ZstdDecompressor().stream_reader(io.BytesIO(body)) as reader:
            out = reader.read(limit + 1)
    except zstandard.ZstdError as exc:
        raise DecodeError("corrupt", f"cannot decode zstd: {exc}") from None
    _check_size(out, limit)
    return out


def _check_size(out: bytes, limit: int) -> None:
    if len(out) > limit:
        raise DecodeError("too_large", f"decodes to more than {limit} bytes")


_DECODERS: dict[str, Callable[[bytes, int], bytes]] = {
    "gzip": _gzip, "x-gzip": _gzip, "deflate": _deflate, "br": _brotli, "zstd": _zstd,
}
