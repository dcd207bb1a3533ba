"""LLM responses: token timing and accounting, model rewriting, and the fallback bookkeeping.

A `TokenMeter` rides along one upstream exchange of an LLM route (None on every other route, so
they pay one attribute check per callback). For a Server-Sent Events stream it reads each `data:`
event as it passes: the first event carrying content marks the first token, the last one the end
of output; `usage` (sent by OpenAI-compatible servers when asked with `stream_options`) gives the
token counts, else the content events are counted and the outcome says so. A non-streamed answer
is buffered (bounded) and read once at the end: its first token arrives with the whole body, so
its TTFT is the full latency and it has no TPOT.
"""

from __future__ import annotations

import json
import json.encoder
from typing import TYPE_CHECKING, Any

_DECODER = json.JSONDecoder()
_COMPACT = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), check_circular=False)
# JSONEncoder.encode builds a new C encoder on every call (Python code, most of a small body's cost):
# build it once, with the arguments encode would pass (no circular check: the document was parsed).
_C_ENCODER = json.encoder.c_make_encoder(  # type: ignore[attr-defined]
    None, _COMPACT.default, json.encoder.encode_basestring, None, ":", ",", False, False, True) \
    if getattr(json.encoder, "c_make_encoder", None) is not None else None


def _compact(doc: object) -> str:
    """json.dumps(doc, ensure_ascii=False, separators=(",", ":")), byte for byte."""
    if _C_ENCODER is None:
        return _COMPACT.encode(doc)
    return "".join(_C_ENCODER(doc, 0))


def loads_json(data: bytes) -> Any:
    """`json.loads(data)`, same results for every input, without its per-call Python work for the
    common case: bytes that decode as UTF-8 go straight to the C scanner (json.loads first detects
    the encoding in Python); anything else (UTF-16/32, a BOM, invalid JSON) takes json.loads itself,
    so its answer or its error is json.loads's."""
    try:
        return _DECODER.decode(data.decode("utf-8"))
    except (ValueError, RecursionError):
        return json.loads(data)


if TYPE_CHECKING:
    from router.dataplane.request import Header

MAX_JSON_BYTES = 1024 * 1024  # a non-streamed answer larger than this is not read for usage
FINISH_REASONS = frozenset({"stop", "length", "tool_calls", "content_filter", "function_call"})


class LlmOutcome:
    """What one LLM response measured. `usage` is "reported" (from the body's usage), "counted"
    (content events counted: one per event, which most servers send per token) or "none".

    One per LLM request, so a plain class: compiled, its constructor is native (a dataclass's stays
    interpreted). Read-only by convention; compares by value like the dataclass it was."""

    __slots__ = ("finish_reason", "input_tokens", "output_tokens", "streamed", "text", "tpot", "ttft", "usage")

    def __init__(self, streamed: bool, ttft: float | None, tpot: float | None, input_tokens: int | None,
                 output_tokens: int | None, usage: str, finish_reason: str | None, text: str = "") -> None:
        self.streamed = streamed
        self.ttft = ttft
        self.tpot = tpot
        self.input_tokens = input_tokens
        self.output_tokens = output_tokens
        self.usage = usage
        self.finish_reason = finish_reason
        self.text = text  # the answer's text, for the judge (kept only when asked)

    def _fields(self) -> tuple[object, ...]:
        return (self.streamed, self.ttft, self.tpot, self.input_tokens, self.output_tokens, self.usage,
                self.finish_reason, self.text)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LlmOutcome) and self._fields() == other._fields()

    def __hash__(self) -> int:
        return hash(self._fields())

    def __repr__(self) -> str:
        return "LlmOutcome(" + ", ".join(f"{n}={v!r}" for n, v in zip(
            ("streamed", "ttft", "tpot", "input_tokens", "output_tokens", "usage", "finish_reason", "text"),
            self._fields(), strict=True)) + ")"


class TokenMeter:
    """Measures one response as it is relayed; `start` again on a retry or fallback."""

    __slots__ = ("buf", "events", "finish", "first", "input", "keep_text", "last", "output", "sent", "size",
                 "stream", "text")

    def __init__(self, keep_text: bool = False) -> None:
        self.keep_text = keep_text
        self.start(0.0)

    def start(self, now: float) -> None:
        self.sent = now
        self.stream = False
        self.buf = b""
        self.size = 0
        self.first = 0.0
        self.last = 0.0
        self.events = 0
        self.input: int | None = None
        self.output: int | None = None
        self.finish: str | None = None
        self.text: list[str] = []

    def head(self, headers: list[Header]) -> None:
        for lname, _, value in headers:
            if lname == b"content-type":
                self.stream = value.startswith(b"text/event-stream")

    def feed(self, data: bytes, now: float) -> None:
        if not self.stream:
            self.size += len(data)
            if self.size <= MAX_JSON_BYTES:
                self.buf += data
            return
        lines = (self.buf + data).split(b"\n")
        self.buf = lines.pop()
        if len(self.buf) > MAX_JSON_BYTES:
            self.buf = b""  # no event is that long: not an event stream we can read
        for line in lines:
            if line.startswith(b"data:"):
                self._event(line[5:].strip(), now)

    def _event(self, payload: bytes, now: float) -> None:
        if not payload or payload == b"[DONE]":
            return
        try:
            doc = loads_json(payload)
        except ValueError:
            return
        if not isinstance(doc, dict):
            return
        self._usage(doc.get("usage"))
        choices = doc.get("choices")
        if isinstance(choices, list) and choices:
            content = _content(choices)
            if content:
                self.events += 1
                self.first = self.first or now
                self.last = now
                if self.keep_text:
                    self.text.append(content)
            self._finish_reason(choices)

    def _usage(self, usage: object) -> None:
        if isinstance(usage, dict):
            prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
            self.input = prompt if type(prompt) is int else self.input
            self.output = completion if type(completion) is int else self.output

    def _finish_reason(self, choices: list[Any]) -> None:
        for choice in choices:
            reason = choice.get("finish_reason") if isinstance(choice, dict) else None
            if isinstance(reason, str):
                self.finish = reason if reason in FINISH_REASONS else "other"

    def outcome(self, now: float) -> LlmOutcome:
        """The measurement of a response that completed at `now`."""
        if not self.stream:
            return self._whole(now)
        usage = "reported" if self.output is not None else "counted" if self.events else "none"
        output = self.output if self.output is not None else self.events
        ttft = self.first - self.sent if self.first else None
        tpot = (self.last - self.first) / (output - 1) if output > 1 and self.last > self.first else None
        return LlmOutcome(True, ttft, tpot, self.input, output, usage, self.finish, "".join(self.text))

    def _whole(self, now: float) -> LlmOutcome:
        doc: object = None
        if self.size <= MAX_JSON_BYTES:
            try:
                doc = loads_json(self.buf)
            except ValueError:
                doc = None
        text = ""
        if isinstance(doc, dict):
            self._usage(doc.get("usage"))
            choices = doc.get("choices")
            if isinstance(choices, list):
                text = _content(choices)
                self._finish_reason(choices)
        counted = self.output is None and bool(text)
        output = self.output if self.output is not None else len(text.split()) if text else None
        usage = "reported" if self.output is not None else "counted" if counted else "none"
        return LlmOutcome(False, now - self.sent if doc is not None else None, None, self.input, output, usage,
                          self.finish, text if self.keep_text else "")


def _content(choices: list[Any]) -> str:
    """The text of the first choice: chat delta or message content, or completion text."""
    c = choices[0]
    if not isinstance(c, dict):
        return ""
    for key in ("delta", "message"):
        part = c.get(key)
        if isinstance(part, dict):
            content = part.get("content")
            return content if isinstance(content, str) else ""
    text = c.get("text")
    return text if isinstance(text, str) else ""


def rewrite_model(body: bytes, model: str) -> bytes:
    """The body with its top-level `model` set to `model`; unchanged (same bytes) when it already is,
    or when it is not a JSON object (the backend will say what is wrong)."""
    try:
        doc = loads_json(body)
    except (ValueError, RecursionError):
        return body
    if not isinstance(doc, dict) or doc.get("model") == model:
        return body
    doc["model"] = model
    return _compact(doc).encode()


def retry_after(headers: list[Header], default: float, cap: float = 300.0) -> float:
    """Seconds from a Retry-After header given in seconds (the HTTP-date form falls back to `default`)."""
    for lname, _, value in headers:
        if lname == b"retry-after":
            try:
                return min(max(float(value), 0.0), cap)
            except ValueError:
                return default
    return default
