"""OpenAI-style completions with deterministic text, for streaming and comparison tests.

The answer is a canned sentence chosen by a hash of the prompt, so the same prompt always
gets the same words. Versions other than "v1" reword one word for about one prompt in
eight, which gives a shadow comparison something small and real to find.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from backends.errors import bad_request

SENTENCES = (
    "The transaction pattern looks consistent with the usual activity of this account.",
    "This request resembles known fraud rings and should be reviewed by an analyst.",
    "Nothing unusual stands out in the amount, the merchant or the time of day.",
    "The card was used in two distant cities within an hour, which is suspicious.",
    "A quick manual check is advised before the payment is released.",
    "Model routers let teams compare a new version against the current one safely.",
    "Shadow traffic shows how a candidate behaves before any user depends on it.",
    "Canary releases move a small share of traffic first and widen it step by step.",
)
SYNONYMS = {
    "usual": "normal", "known": "familiar", "unusual": "odd", "distant": "remote", "quick": "brief",
    "new": "fresh", "shows": "reveals", "small": "modest",
}
V2_REWORDS_ONE_IN = 8


def _digest(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


def reply(prompt: str, version: str) -> list[str]:
    """The answer to `prompt` as tokens; joined, they are the full text."""
    digest = _digest(prompt)
    words = SENTENCES[digest % len(SENTENCES)].split(" ")
    if version != "v1" and (digest >> 16) % V2_REWORDS_ONE_IN == 0:
        i = next(i for i, word in enumerate(words) if word in SYNONYMS)
        words[i] = SYNONYMS[words[i]]
    return [word if i == 0 else " " + word for i, word in enumerate(words)]


@dataclass(frozen=True)
class TextRequest:
    """A chat or text completion request, reduced to what the fake model uses."""

    chat: bool
    model: str
    prompt: str
    stream: bool
    max_tokens: int | None
    include_usage: bool = False  # stream_options.include_usage: a last chunk carries the usage


def parse(body: object, chat: bool) -> TextRequest:
    if not isinstance(body, dict):
        raise bad_request("the body must be a JSON object")
    model, stream, max_tokens = body.get("model"), body.get("stream", False), body.get("max_tokens")
    if not isinstance(model, str):
        raise bad_request('"model" must be a string')
    if not isinstance(stream, bool):
        raise bad_request('"stream" must be true or false')
    if max_tokens is not None and (type(max_tokens) is not int or max_tokens < 1):
        raise bad_request('"max_tokens" must be a positive integer')
    prompt = _chat_prompt(body.get("messages")) if chat else _text_prompt(body.get("prompt"))
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise bad_request('"stream_options" must be an object')
    include_usage = bool(options and options.get("include_usage"))
    return TextRequest(chat, model, prompt, stream, max_tokens, include_usage)


def _chat_prompt(messages: object) -> str:
    if not isinstance(messages, list) or not messages:
        raise bad_request('"messages" must be a non-empty list of {"role": ..., "content": ...}')
    lines = []
    for i, message in enumerate(messages):
        if not (isinstance(message, dict) and isinstance(message.get("role"), str)
                and isinstance(message.get("content"), str)):
            raise bad_request(f'messages[{i}] must be an object with string "role" and "content"')
        lines.append(f"{message['role']}: {message['content']}")
    return "\n".join(lines)


def _text_prompt(prompt: object) -> str:
    if not isinstance(prompt, str):
        raise bad_request('"prompt" must be a string')
    return prompt


@dataclass(frozen=True)
class Answer:
    """What one request gets: its tokens, and the fields every chunk repeats."""

    request: TextRequest
    tokens: list[str]
    finish_reason: str
    id: str
    created: int
    fingerprint: str

    @property
    def object(self) -> str:
        return "chat.completion" if self.request.chat else "text_completion"


def answer(request: TextRequest, version: str, created: int, signature: str = "") -> Answer:
    tokens = reply(request.prompt, version)
    limit = request.max_tokens
    finish = "length" if limit is not None and limit < len(tokens) else "stop"
    prefix = "chatcmpl-" if request.chat else "cmpl-"
    # The id depends only on the request, so identical requests get identical answers.
    ident = prefix + hashlib.blake2b(f"{version}\n{request.prompt}".encode(), digest_size=12).hexdigest()
    # The signature survives max_tokens: it is what tells this version's answers apart.
    signed = tokens[:limit] + ([" " + signature] if signature else [])
    return Answer(request, signed, finish, ident, created, f"{request.model}-{version}")


def _envelope(a: Answer, object_name: str, choice: dict[str, Any]) -> dict[str, Any]:
    return {"id": a.id, "object": object_name, "created": a.created, "model": a.request.model,
            "system_fingerprint": a.fingerprint, "choices": [{"index": 0, **choice}]}


def full(a: Answer) -> dict[str, Any]:
    """The non-streamed response."""
    text = "".join(a.tokens)
    if a.request.chat:
        choice: dict[str, Any] = {"message": {"role": "assistant", "content": text}}
    else:
        choice = {"text": text, "logprobs": None}
    body = _envelope(a, a.object, {**choice, "finish_reason": a.finish_reason})
    body["usage"] = usage(a)
    return body


def usage(a: Answer) -> dict[str, int]:
    prompt_tokens = len(a.request.prompt.split())
    return {"prompt_tokens": prompt_tokens, "completion_tokens": len(a.tokens),
            "total_tokens": prompt_tokens + len(a.tokens)}


def chunks(a: Answer) -> Iterator[dict[str, Any]]:
    """The streamed response: one chunk per token, then one that carries the finish reason."""
    name = "chat.completion.chunk" if a.request.chat else "text_completion"
    for i, token in enumerate(a.tokens):
        yield _envelope(a, name, {**_piece(a.request.chat, token, first=i == 0), "finish_reason": None})
    yield _envelope(a, name, {**_piece(a.request.chat, None, first=False), "finish_reason": a.finish_reason})
    if a.request.include_usage:  # as OpenAI sends it: no choices, only the usage
        yield {**_envelope(a, name, {}), "choices": [], "usage": usage(a)}


def _piece(chat: bool, token: str | None, first: bool) -> dict[str, Any]:
    if not chat:
        return {"text": token or "", "logprobs": None}
    delta: dict[str, Any] = {"role": "assistant"} if first else {}
    if token is not None:
        delta["content"] = token
    return {"delta": delta}
