"""Parsing of the human units used in the routing YAML: durations (`2s`, `500ms`) and sizes (`10MiB`)."""

from __future__ import annotations

import re

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)\s*$")
_DURATION_FACTORS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(B|KiB|MiB|GiB|KB|MB|GB|k|K|M|G)?\s*$")
_SIZE_FACTORS = {
    None: 1, "B": 1,
    "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3,
    "k": 1000, "K": 1000, "KB": 1000, "M": 1000**2, "MB": 1000**2, "G": 1000**3, "GB": 1000**3,
}


def parse_duration(text: str) -> float:
    """`500ms` -> 0.5, `2s` -> 2.0, `5m`, `2h`. Raises ValueError with the accepted forms."""
    m = _DURATION.match(text)
    if not m:
        raise ValueError(f"bad duration {text!r}: write a number and a unit, e.g. 500ms, 2s, 5m, 2h")
    seconds = float(m.group(1)) * _DURATION_FACTORS[m.group(2)]
    if not seconds < 10 * 365 * 86400:
        raise ValueError(f"duration {text!r} is longer than ten years")
    return seconds


def parse_size(text: str) -> int:
    """`10MiB` -> 10485760; a bare integer is bytes. Raises ValueError with the accepted forms."""
    m = _SIZE.match(text)
    if not m:
        raise ValueError(f"bad size {text!r}: write a number and a unit, e.g. 512KiB, 10MiB, 1GiB")
    size = float(m.group(1)) * _SIZE_FACTORS[m.group(2)]
    if not size < 2**50:
        raise ValueError(f"size {text!r} is larger than 1 PiB")
    return int(size)
