"""The JSONPath subset the comparison and the prediction log use: $, .key, ['key'], [n], [*]."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Final

# ---- JSONPath subset: $, .key, ['key'], [n], [*] ----------------------------------------------


class Wildcard(Enum):
    """`[*]`: any index of a list or any key of an object."""

    ANY = "*"


ANY = Wildcard.ANY
Segment = str | int | Wildcard
Location = tuple[str | int, ...]

_DOTTED_KEY = re.compile(r"[^\s.\[\]'\"*]+")
_INDEX = re.compile(r"\[(-?[0-9]+)\]")
_QUOTED = re.compile(r"""\[(?:'((?:[^'\\]|\\.)*)'|"((?:[^"\\]|\\.)*)")\]""", re.DOTALL)
_PLAIN_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")


@dataclass(frozen=True, slots=True)
class JsonPath:
    """A parsed path; `text` is what the user wrote, kept for messages."""

    text: str
    segments: tuple[Segment, ...]

    def matches(self, location: Location) -> bool:
        """Whether this path names exactly `location`."""
        return len(location) == len(self.segments) and all(
            s is ANY or s == part for s, part in zip(self.segments, location, strict=True))


def parse_path(text: str) -> JsonPath:
    """Parse `$`, `.key`, `['key']`, `[n]` and `[*]`; raises ValueError saying what is wrong and where."""
    if not text.startswith("$"):
        raise ValueError(f"bad path {text!r}: a path starts with '$'")
    segments: list[Segment] = []
    i = 1
    while i < len(text):
        segment, i = _parse_segment(text, i)
        segments.append(segment)
    return JsonPath(text, tuple(segments))


def _parse_segment(text: str, i: int) -> tuple[Segment, int]:
    if text.startswith("..", i):
        raise _path_error(text, i, "recursive descent '..' is not supported")
    if text.startswith(".*", i):
        raise _path_error(text, i, "write the wildcard as '[*]'")
    if text[i] == ".":
        key = _DOTTED_KEY.match(text, i + 1)
        if key is None:
            raise _path_error(text, i + 1, "expected a key after '.' (quote unusual keys as ['key'])")
        return key.group(), key.end()
    if text.startswith("[*]", i):
        return ANY, i + 3
    if index := _INDEX.match(text, i):
        if (n := int(index.group(1))) < 0:
            raise _path_error(text, i, "negative indices are not supported")
        return n, index.end()
    if quoted := _QUOTED.match(text, i):
        raw = quoted.group(1) if quoted.group(1) is not None else quoted.group(2)
        return re.sub(r"\\(.)", r"\1", raw, flags=re.DOTALL), quoted.end()
    if text[i] == "[":
        raise _path_error(text, i, "expected [n], [*] or ['key']")
    raise _path_error(text, i, f"unexpected {text[i]!r}; expected .key, [n], [*] or ['key']")


def _path_error(text: str, offset: int, problem: str) -> ValueError:
    return ValueError(f"bad path {text!r} at offset {offset}: {problem}")


# A model's responses repeat the same keys: each one's segment is remembered (bounded), so that
# naming a field costs a dict lookup, not a regex match.
_SEGMENTS: dict[str, str] = {}
_SEGMENTS_MAX: Final = 4096


def _key_segment(key: str) -> str:
    segment = _SEGMENTS.get(key)
    if segment is None:
        if _PLAIN_KEY.fullmatch(key):
            segment = "." + key
        else:
            segment = "['" + key.replace("\\", "\\\\").replace("'", "\\'") + "']"
        if len(_SEGMENTS) >= _SEGMENTS_MAX:
            _SEGMENTS.clear()
        _SEGMENTS[key] = segment
    return segment


def field_name(location: Sequence[str | int]) -> str:
    """The field of a location: keys kept, indices generalised to `[*]`; it parses with parse_path."""
    return "$" + "".join("[*]" if isinstance(part, int) else _key_segment(part) for part in location)

