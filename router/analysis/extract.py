"""Extraction: a response body, per protocol, turned into the canonical document compared field by field."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Final, Literal, get_args

Format = Literal["kserve-v1", "open-inference-v2", "tfserving", "mlflow", "openai", "json"]
FORMATS: tuple[str, ...] = get_args(Format)
MAX_VALUES = 10_000


class ExtractionError(ValueError):
    """The body is not what its format promises: not JSON, no predictions, a cut-off stream.

    `reason` is a short fixed name (one of EXTRACTION_REASONS) for counting and reporting.
    """

    def __init__(self, message: str, reason: str = "unexpected_shape") -> None:
        super().__init__(message)
        self.reason = reason


# Why a pair was not compared, by kind: bounded, so they can be counters and metric labels.
EXTRACTION_REASONS = ("not_json", "error_response", "missing_output", "unexpected_shape", "stream_incomplete",
                      "unsupported_encoding", "corrupt_encoding", "paths_matched_nothing")


# ---- extraction ---------------------------------------------------------------------------------


def extract(body: bytes, format: Format, content_type: str = "application/json") -> object:
    """The canonical document of a response body; raises ExtractionError when it is not `format`."""
    if format == "openai" and _is_event_stream(body, content_type):
        return _openai_stream(body)
    return _EXTRACTORS[format](_load_json(body))


# json.loads on bytes spends more in its Python wrapper (encoding detection, whitespace regexes,
# the decoder's methods) than the C scanner spends on a small response. The common case, UTF-8 text
# that opens an object or array, goes straight to the scanner; anything else, and every failure,
# goes through json.loads itself, so results and error messages are json.loads's.
_scan: Final[Callable[[str, int], tuple[object, int]]] = json.decoder.JSONDecoder().scan_once  # type: ignore[attr-defined]
_TRAILING_WS: Final = re.compile(r"[ \t\n\r]*")


def _load_json(body: bytes | str) -> object:
    if isinstance(body, bytes) and body[:1] in (b"{", b"[") and len(body) >= 2 and body[1]:
        # As json.detect_encoding: two non-zero first bytes and no BOM are UTF-8.
        try:
            text = body.decode("utf-8", "surrogatepass")
            doc, end = _scan(text, 0)
        except (ValueError, StopIteration, RecursionError):
            pass  # json.loads says what is wrong
        else:
            if end == len(text) or _TRAILING_WS.match(text, end).end() == len(text):  # type: ignore[union-attr]
                return doc
    try:
        return json.loads(body)
    except RecursionError:
        raise ExtractionError("body is not usable JSON: nested too deeply", "not_json") from None
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
        raise ExtractionError(f"body is not JSON: {exc}", "not_json") from None


def _short(value: object) -> str:
    return repr(value)[:200]


def _member(doc: object, *keys: str) -> tuple[str, object]:
    """The first of `keys` present in the object `doc`, with its value."""
    if not isinstance(doc, dict):
        raise ExtractionError(f"expected a JSON object, got {_kind(doc)}")
    for key in keys:
        if key in doc:
            return key, doc[key]
    if "error" in doc:
        raise ExtractionError(f"error response: {_short(doc['error'])}", "error_response")
    wanted = " or ".join(repr(k) for k in keys)
    raise ExtractionError(f"no {wanted} in the response (keys: {_short(list(doc)[:10])})", "missing_output")


def _kserve_v1(doc: object) -> object:
    return {"predictions": _member(doc, "predictions")[1]}


def _tfserving(doc: object) -> object:
    key, value = _member(doc, "predictions", "outputs")
    return {key: value}


def _mlflow(doc: object) -> object:
    if isinstance(doc, dict) and "predictions" not in doc and "error_code" in doc:
        raise ExtractionError(f"error response: {_short(doc.get('message', doc['error_code']))}", "error_response")
    if isinstance(doc, dict) and "predictions" in doc:
        return {"predictions": doc["predictions"]}
    if isinstance(doc, list | dict):  # MLflow 1.x returned the bare output
        return {"predictions": doc}
    raise ExtractionError(f"expected a JSON object or list, got {_kind(doc)}")


def _open_inference_v2(doc: object) -> object:
    outputs = _member(doc, "outputs")[1]
    if not isinstance(outputs, list):
        raise ExtractionError(f"'outputs' is {_kind(outputs)}, not a list")
    named: dict[str, object] = {}
    for i, output in enumerate(outputs):
        name = output.get("name") if isinstance(output, dict) else None
        if not isinstance(output, dict) or not isinstance(name, str):
            raise ExtractionError(f"outputs[{i}] is not an object with a string 'name'")
        if name in named:
            raise ExtractionError(f"outputs[{i}]: output {name!r} appears twice")
        named[name] = _reshaped(output, i)
    return {"outputs": named}


def _reshaped(output: dict[str, object], i: int) -> object:
    data, shape = output.get("data"), output.get("shape")
    if not isinstance(data, list):
        raise ExtractionError(f"outputs[{i}].data is not a list")
    if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
        raise ExtractionError(f"outputs[{i}].shape is not a list of sizes")
    flat = _flatten(data)  # some servers send data already nested; the shape decides
    if math.prod(shape) != len(flat):
        raise ExtractionError(f"outputs[{i}]: shape {shape} holds {math.prod(shape)} values, data has {len(flat)}")
    if not shape:
        return flat[0]
    if not flat:  # zero-size output: nothing to compare, and [0, n] must not build n empty rows
        return []
    rows: list[object] = flat
    for size in reversed(shape[1:]):
        rows = [rows[j:j + size] for j in range(0, len(rows), size)]
    return rows


def _flatten(data: list[object]) -> list[object]:
    if not any(isinstance(x, list) for x in data):
        return data
    flat: list[object] = []
    stack: list[Iterator[object]] = [iter(data)]
    while stack:
        for x in stack[-1]:
            if isinstance(x, list):
                stack.append(iter(x))
                break
            flat.append(x)
        else:
            stack.pop()
    return flat


def _openai(doc: object) -> object:
    choices = _member(doc, "choices")[1]
    if not isinstance(choices, list):
        raise ExtractionError(f"'choices' is {_kind(choices)}, not a list")
    return {"choices": [_openai_choice(c, i) for i, c in _by_index(choices)]}


def _by_index(choices: list[object]) -> list[tuple[int, object]]:
    indexed: list[tuple[int, object]] = []
    for position, choice in enumerate(choices):
        index = choice.get("index", position) if isinstance(choice, dict) else position
        if type(index) is not int:
            raise ExtractionError(f"choice {position}: 'index' is not an integer")
        indexed.append((index, choice))
    return sorted(indexed, key=lambda pair: pair[0])


def _openai_choice(choice: object, i: int) -> object:
    if isinstance(choice, dict) and isinstance(choice.get("message"), dict):
        return {"message": {"content": _text_or_none(choice["message"].get("content"), i)}}
    if isinstance(choice, dict) and "text" in choice:
        return {"text": _text_or_none(choice["text"], i)}
    raise ExtractionError(f"choice {i} has neither 'message' nor 'text'")


def _text_or_none(value: object, i: int) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise ExtractionError(f"choice {i}: the text is {_kind(value)}, not a string")


_SSE_START = re.compile(rb"(?:\xef\xbb\xbf)?\s*(?:data|event|id|retry)?:")
_LINE_BREAK = re.compile(r"\r\n|\r|\n")


def _is_event_stream(body: bytes, content_type: str) -> bool:
    # Sniffed as well: only one content type may be known for both sides.
    mime = content_type.partition(";")[0].strip().lower()
    return mime == "text/event-stream" or _SSE_START.match(body) is not None


@dataclass(slots=True)
class _StreamedChoice:
    kind: Literal["message", "text"]
    parts: list[str] = field(default_factory=list)
    has_content: bool = False


def _openai_stream(body: bytes) -> object:
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ExtractionError(f"event stream is not UTF-8: {exc}", "not_json") from None
    choices: dict[int, _StreamedChoice] = {}
    for data in _sse_data(text):
        if data.strip() == "[DONE]":
            return {"choices": [_streamed_choice(choices[i]) for i in sorted(choices)]}
        _absorb(choices, _load_json(data))
    # Without [DONE] the stream was cut (by a byte cap or a dropped connection): partial text
    # would look like a disagreement.
    raise ExtractionError("event stream ended without 'data: [DONE]'", "stream_incomplete")


def _sse_data(text: str) -> Iterator[str]:
    """The data of each event, by the WHATWG rules: comments, multi-line data, any line break."""
    data: list[str] = []
    for line in _LINE_BREAK.split(text):  # not splitlines(): U+2028 may sit inside JSON strings
        if not line:
            if data:
                yield "\n".join(data)
            data = []
        elif not line.startswith(":"):
            name, _, value = line.partition(":")
            if name == "data":
                data.append(value.removeprefix(" "))
    if data:
        yield "\n".join(data)


def _absorb(choices: dict[int, _StreamedChoice], chunk: object) -> None:
    if isinstance(chunk, dict) and "error" in chunk:
        raise ExtractionError(f"error event: {_short(chunk['error'])}", "error_response")
    deltas = chunk.get("choices", []) if isinstance(chunk, dict) else None
    if not isinstance(deltas, list):
        raise ExtractionError(f"stream chunk without a 'choices' list: {_short(chunk)}")
    for i, delta in _by_index(deltas):
        if isinstance(delta, dict) and isinstance(delta.get("delta"), dict):
            _append(choices, i, "message", delta["delta"].get("content"))
        elif isinstance(delta, dict) and "text" in delta:
            _append(choices, i, "text", delta["text"])


def _append(choices: dict[int, _StreamedChoice], i: int, kind: Literal["message", "text"], piece: object) -> None:
    entry = choices.setdefault(i, _StreamedChoice(kind))
    if piece is not None:
        entry.parts.append(_text_or_none(piece, i) or "")
        entry.has_content = True


def _streamed_choice(choice: _StreamedChoice) -> object:
    text = "".join(choice.parts) if choice.has_content else None
    return {"message": {"content": text}} if choice.kind == "message" else {"text": text or ""}


_EXTRACTORS: Mapping[Format, Callable[[object], object]] = {
    "kserve-v1": _kserve_v1, "open-inference-v2": _open_inference_v2, "tfserving": _tfserving,
    "mlflow": _mlflow, "openai": _openai, "json": lambda doc: doc,
}


class _Missing:
    """Stands in for a key one side lacks; its own kind, so it never matches anything."""


MISSING = _Missing()


_KINDS: Mapping[type, str] = {type(None): "null", bool: "bool", int: "number", float: "number",
                              str: "string", list: "list", dict: "object", _Missing: "missing"}


def _kind(value: object) -> str:
    return _KINDS.get(type(value), "other")
