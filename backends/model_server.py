"""An example model server: the numpy classifier of `backends.model` over HTTP.

    python -m backends.model_server --port 9001 --name fraud --version v1

It speaks KServe V1 (`POST /v1/models/{name}:predict`), the Open Inference Protocol
(`POST /v2/models/{name}/infer`) and OpenAI-style completions (`POST /v1/chat/completions`,
`POST /v1/completions`, optionally streamed as Server-Sent Events). Answers are
deterministic: identical requests get identical bodies unless a knob adds noise.

For tests and the bench it can be made slow, failing, noisy or drifting, at start
(command-line options) or while running:

- `GET /-/control` returns the knobs (see `backends.knobs.Knobs`); `POST /-/control` with a
  JSON object of some of them replaces those, all or nothing (400 names the bad field).
  latency_ms + uniform(0, jitter_ms) delays, and error_rate fails with 500, every inference
  request (V1, V2, completions) that parsed; perturb, shift and noise_field change predictions.
- Text knobs: `ttft_ms` (a stream's head goes at once, its first token this much later),
  `stream_delay_ms` (between tokens), `reject_rate` with `retry_after_s` (429 with Retry-After);
  streams carry `usage` when asked with `stream_options.include_usage`. `--signature TEXT`
  appends a last word to every answer, so a judge can tell versions apart.
- Judge mode (`--judge-favour TEXT`): chat completions answer A, B or TIE, preferring the answer
  that contains TEXT in `judge_percent` of the verdicts, deterministically; `judge_garbage` is the
  share of nonsense verdicts and `latency_ms` makes it hang.
- `GET /-/stats` returns `{"requests", "by_path", "last_method", "last_path", "last_headers"}`
  (header names lower-cased) for every request outside `/-/`; `DELETE /-/stats` resets it.

Malformed input is a 400, an unknown model a 404, and every error is a JSON body.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import hashlib
import json
import logging
import signal
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from aiohttp import web

from backends import kserve, textgen
from backends.errors import ApiError, bad_request
from backends.knobs import Knobs, Prediction, apply, noise_field, updated
from backends.model import Floats, load

log = logging.getLogger("backends.model_server")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_OPENAI_PATHS = frozenset({"/v1/chat/completions", "/v1/completions"})


@dataclass(frozen=True)
class ServerOptions:
    """What the command line sets; the behaviour fields are the knobs the server starts with."""

    name: str = "fraud"
    version: str = "v1"
    host: str = "127.0.0.1"
    port: int = 9001
    latency_ms: float = 0.0
    jitter_ms: float = 0.0
    error_rate: float = 0.0
    perturb: float = 0.0
    noise_field: str = "none"
    shift: float = 0.0
    stream_delay_ms: float = 0.0
    seed: int = 0
    ttft_ms: float = 0.0
    reject_rate: float = 0.0
    retry_after_s: float = 1.0
    signature: str = ""  # text: appended as a last word to every answer (tells versions apart for a judge)
    judge_favour: str = ""  # judge mode (chat completions answer A, B or TIE): prefer the answer with this text
    judge_percent: float = 50.0
    judge_garbage: float = 0.0

    def knobs(self) -> Knobs:
        """The starting knobs; ValueError if an option is out of range."""
        return Knobs(self.latency_ms, self.jitter_ms, self.error_rate, self.perturb,
                     noise_field(self.noise_field), self.shift, self.stream_delay_ms, self.ttft_ms,
                     self.reject_rate, self.retry_after_s, self.judge_percent, self.judge_garbage)


@dataclass
class Stats:
    """What reached this server, so tests can check what a router forwarded."""

    requests: int = 0
    by_path: Counter[str] = field(default_factory=Counter)
    last_method: str | None = None
    last_path: str | None = None
    last_headers: dict[str, str] = field(default_factory=dict)

    def record(self, request: web.Request) -> None:
        self.requests += 1
        self.by_path[request.path] += 1
        self.last_method, self.last_path = request.method, request.path_qs
        # Lower-case names, repeated headers joined: a plain dict a test can index.
        headers = request.headers
        self.last_headers = {k.lower(): ", ".join(headers.getall(k)) for k in headers}

    def to_json(self) -> dict[str, Any]:
        return {"requests": self.requests, "by_path": dict(self.by_path), "last_method": self.last_method,
                "last_path": self.last_path, "last_headers": self.last_headers}


class ModelServer:
    """One model's live state: classifier, current knobs, random generator and counters."""

    def __init__(self, options: ServerOptions) -> None:
        self.options = options
        self.knobs = options.knobs()
        self.model = load(options.version)
        self.rng = np.random.default_rng(options.seed)
        self.stats = Stats()
        self.judged = 0  # judge mode: verdicts given, for the deterministic win pattern

    def check_name(self, name: str) -> None:
        if name != self.options.name:
            raise ApiError(404, f"model {name!r} not found; this server serves {self.options.name!r}")

    async def misbehave(self) -> None:
        """Wait and maybe fail, as the knobs say; called once the request is known to be valid."""
        knobs = self.knobs
        delay_ms = knobs.latency_ms + (self.rng.uniform(0.0, knobs.jitter_ms) if knobs.jitter_ms else 0.0)
        if delay_ms:
            await asyncio.sleep(delay_ms / 1000)
        if knobs.error_rate and self.rng.random() < knobs.error_rate:
            raise ApiError(500, "injected failure (error_rate)")

    async def infer(self, x: Floats) -> Prediction:
        await self.misbehave()
        return apply(self.model, x, self.knobs, self.rng)

    def extra_noise(self) -> dict[str, str]:
        """The random top-level field of the text endpoints, which have no scores or labels."""
        name = self.knobs.noise_field
        return {} if name in (None, "scores", "label") else {str(name): self.rng.bytes(8).hex()}


SERVER = web.AppKey("server", ModelServer)


def _loads(raw: bytes) -> object:
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as exc:  # RecursionError: absurdly deep nesting
        raise bad_request(f"the body is not valid JSON: {exc}") from None


async def read_json(request: web.Request) -> object:
    return _loads(await request.read())


# -- inference -------------------------------------------------------------------------------

async def v1_predict(request: web.Request) -> web.Response:
    server = request.app[SERVER]
    server.check_name(request.match_info["name"])
    x = kserve.parse_v1(await read_json(request))
    pred = await server.infer(x)
    return web.json_response(kserve.render_v1(pred, server.options.name, server.options.version))


async def v2_infer(request: web.Request) -> web.Response:
    server = request.app[SERVER]
    server.check_name(request.match_info["name"])
    raw = await request.read()
    parsed = kserve.parse_v2(_loads(raw))
    # Without a client id, derive one from the body so identical requests stay identical.
    request_id = parsed.id if parsed.id is not None else hashlib.blake2b(raw, digest_size=8).hexdigest()
    pred = await server.infer(parsed.x)
    return web.json_response(kserve.render_v2(pred, server.options.name, server.options.version, request_id))


async def chat_completions(request: web.Request) -> web.StreamResponse:
    return await _complete(request, chat=True)


async def completions(request: web.Request) -> web.StreamResponse:
    return await _complete(request, chat=False)


async def _complete(request: web.Request, chat: bool) -> web.StreamResponse:
    server = request.app[SERVER]
    parsed = textgen.parse(await read_json(request), chat)
    options, knobs = server.options, server.knobs
    if options.judge_favour and chat:
        return await _judge(request, server, parsed)
    server.check_name(parsed.model)
    if knobs.reject_rate and server.rng.random() < knobs.reject_rate:
        return error_response(request, 429, "overloaded (reject_rate)",
                              {"Retry-After": f"{knobs.retry_after_s:g}"})
    await server.misbehave()
    answer = textgen.answer(parsed, options.version, int(time.time()), options.signature)
    if parsed.stream:
        return await _stream(request, answer, knobs.stream_delay_ms, knobs.ttft_ms)
    if knobs.ttft_ms:
        await asyncio.sleep(knobs.ttft_ms / 1000)
    return web.json_response({**textgen.full(answer), **server.extra_noise()})


async def _judge(request: web.Request, server: ModelServer, parsed: textgen.TextRequest) -> web.Response:
    """Deterministic judge: the answer containing `judge_favour` wins judge_percent of the verdicts,
    spread evenly (verdict n favours it when floor((n+1)p) > floor(np)); TIE when it is in both or none."""
    await server.misbehave()
    knobs, favour = server.knobs, server.options.judge_favour
    n, p = server.judged, knobs.judge_percent / 100
    server.judged += 1
    if knobs.judge_garbage and server.rng.random() < knobs.judge_garbage:
        word = "I cannot decide between these two answers."
    else:
        first, _, second = parsed.prompt.partition("Answer B:")
        in_a, in_b = favour in first.partition("Answer A:")[2], favour in second
        if in_a == in_b:
            word = "TIE"
        else:
            favoured = int((n + 1) * p) > int(n * p)
            word = "A" if in_a == favoured else "B"
    body = {"id": f"judge-{n}", "object": "chat.completion", "created": int(time.time()), "model": parsed.model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": word}, "finish_reason": "stop"}]}
    return web.json_response(body)


async def _stream(request: web.Request, answer: textgen.Answer, delay_ms: float,
                  ttft_ms: float = 0.0) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    await response.prepare(request)
    events = [json.dumps(chunk) for chunk in textgen.chunks(answer)] + ["[DONE]"]
    try:
        for i, event in enumerate(events):
            if i == 0 and ttft_ms:
                await asyncio.sleep(ttft_ms / 1000)
            if i and delay_ms:
                await asyncio.sleep(delay_ms / 1000)
            await response.write(f"data: {event}\n\n".encode())  # one write, one HTTP chunk
        await response.write_eof()
    except ConnectionError:
        pass  # the client left mid-stream; there is nobody to tell
    return response


# -- metadata, health, control ---------------------------------------------------------------

async def v1_metadata(request: web.Request) -> web.Response:
    options = request.app[SERVER].options
    request.app[SERVER].check_name(request.match_info["name"])
    return web.json_response(kserve.metadata_v1(options.name, options.version))


async def v2_metadata(request: web.Request) -> web.Response:
    options = request.app[SERVER].options
    request.app[SERVER].check_name(request.match_info["name"])
    return web.json_response(kserve.metadata_v2(options.name, options.version))


async def v2_ready(request: web.Request) -> web.Response:
    request.app[SERVER].check_name(request.match_info["name"])
    return web.json_response({"name": request.match_info["name"], "ready": True})


async def health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def get_control(request: web.Request) -> web.Response:
    return web.json_response(request.app[SERVER].knobs.to_json())


async def post_control(request: web.Request) -> web.Response:
    server = request.app[SERVER]
    try:
        server.knobs = updated(server.knobs, await read_json(request))
    except ValueError as exc:
        raise bad_request(str(exc)) from None
    return web.json_response(server.knobs.to_json())


async def get_stats(request: web.Request) -> web.Response:
    return web.json_response(request.app[SERVER].stats.to_json())


async def reset_stats(request: web.Request) -> web.Response:
    request.app[SERVER].stats = Stats()
    return web.json_response(request.app[SERVER].stats.to_json())


# -- the application -------------------------------------------------------------------------

@web.middleware
async def count_requests(request: web.Request, handler: Handler) -> web.StreamResponse:
    if not request.path.startswith("/-/"):
        request.app[SERVER].stats.record(request)
    return await handler(request)


@web.middleware
async def errors_as_json(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as exc:
        return error_response(request, exc.status, exc.message)
    except web.HTTPException as exc:  # aiohttp's own: no route, wrong method, body too large
        if exc.status < 400:
            raise
        allow = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else {}
        return error_response(request, exc.status, f"{exc.reason}: {request.method} {request.path}", allow)
    except Exception:
        log.exception("unexpected error on %s %s", request.method, request.path)
        return error_response(request, 500, "internal error")


def error_response(request: web.Request, status: int, message: str,
                   headers: dict[str, str] | None = None) -> web.Response:
    if request.path in _OPENAI_PATHS:
        kind = "invalid_request_error" if status < 500 else "server_error"
        code = "model_not_found" if status == 404 else None
        body: dict[str, Any] = {"error": {"message": message, "type": kind, "code": code}}
    else:
        body = {"error": message}
    return web.json_response(body, status=status, headers=headers)


def build_app(options: ServerOptions) -> web.Application:
    """The whole server as an aiohttp application; ValueError if an option is out of range."""
    app = web.Application(middlewares=[count_requests, errors_as_json])
    app[SERVER] = ModelServer(options)
    name = "{name:[^/:]+}"  # a model name stops at ':' so ':predict' is never part of it
    app.add_routes([
        web.post(f"/v1/models/{name}:predict", v1_predict),
        web.get(f"/v1/models/{name}", v1_metadata),
        web.post(f"/v2/models/{name}/infer", v2_infer),
        web.get(f"/v2/models/{name}", v2_metadata),
        web.get(f"/v2/models/{name}/ready", v2_ready),
        web.post("/v1/chat/completions", chat_completions),
        web.post("/v1/completions", completions),
        web.get("/health", health),
        web.get("/v2/health/live", health),
        web.get("/v2/health/ready", health),
        web.get("/-/control", get_control),
        web.post("/-/control", post_control),
        web.get("/-/stats", get_stats),
        web.delete("/-/stats", reset_stats),
    ])
    return app


# -- command line ----------------------------------------------------------------------------

def parse_args(argv: Sequence[str] | None = None) -> ServerOptions:
    parser = argparse.ArgumentParser(prog="python -m backends.model_server", description=__doc__.split("\n")[0])
    defaults = ServerOptions()
    parser.add_argument("--port", type=int, default=defaults.port, help="0 picks a free port")
    for f in dataclasses.fields(ServerOptions):
        if f.name != "port":
            kind = type(getattr(defaults, f.name))
            parser.add_argument("--" + f.name.replace("_", "-"), type=kind, default=getattr(defaults, f.name))
    options = ServerOptions(**vars(parser.parse_args(argv)))
    try:
        options.knobs()
    except ValueError as exc:
        parser.error(str(exc))
    return options


async def serve(options: ServerOptions) -> None:
    runner = web.AppRunner(build_app(options), access_log=None, shutdown_timeout=5.0)
    await runner.setup()
    try:
        await web.TCPSite(runner, options.host, options.port).start()
        port = runner.addresses[0][1]
        print(f"model_server {options.name}/{options.version} listening on http://{options.host}:{port}", flush=True)
        await _until_signalled()
    finally:
        await runner.cleanup()


async def _until_signalled() -> None:
    # The handlers only note the signal; shutdown itself runs in `serve`.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop if it is installed, else asyncio's default."""
    try:
        import uvloop
    except ImportError:
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def main(argv: Sequence[str] | None = None) -> int:
    options = parse_args(argv)
    try:
        with asyncio.Runner(loop_factory=loop_factory()) as runner:
            runner.run(serve(options))
    except OSError as exc:  # typically the port is taken
        print(f"model_server: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
