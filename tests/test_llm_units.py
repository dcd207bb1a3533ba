"""The pure parts of LLM routing, by tables: config keys, model matching, the token meter, the
judge's verdicts and the LLM gates."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from router.analysis import llm
from router.analysis.decision import Gate, Gates, LlmEvidence, RolloutPolicy, Verdict, latency_histogram, llm_gates
from router.analysis.llm import TokenMeter, retry_after, rewrite_model
from router.config import ConfigError, parse_config
from router.dataplane.table import BadModel, RoutingTable, body_model
from router.observe.judge import candidate_result, question_of, read_verdict

BASE = """\
listen: 127.0.0.1:8080
backends:
  a: {url: "http://127.0.0.1:9001", model: served-a}
  b: {url: "http://127.0.0.1:9002"}
routes:
"""


def config(routes: str) -> RoutingTable:
    return RoutingTable(parse_config(BASE + routes))


def errors(routes: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(BASE + routes, "llm.yaml")
    return [str(i) for i in info.value.issues]


def test_llm_keys_parse() -> None:
    table = config("""\
  - name: chat
    match: {path: /v1/chat/completions, model: [llama-3-8b, "llama-3-*"]}
    primary: a
    candidate: b
    fallback: [b]
    first_token_timeout: 2s
    shadow:
      backend: b
      compare: {format: openai, judge: {url: "http://127.0.0.1:9009", model: judge, sample_percent: 10}}
    rollout: {gates: {max_ttft_ratio: 1.5, max_tpot_ratio: 1.3, min_judge_win_rate: 0.45, llm_quantile: 0.95}}
  - name: plain
    match: {path_prefix: /v1/models}
    primary: b
""")
    rc = table.by_name["chat"].config
    assert rc.fallback == ("b",) and rc.first_token_timeout == 2.0
    assert rc.shadow is not None and rc.shadow.judge is not None and rc.shadow.judge.sample_percent == 10
    assert rc.rollout is not None and rc.rollout.policy.gates.max_ttft_ratio == 1.5
    assert rc.rollout.policy.gates.llm_quantile == 0.95
    assert table.config.backends["a"].model == "served-a"
    assert table.by_name["chat"].llm and not table.by_name["plain"].llm


@pytest.mark.parametrize(("routes", "expected"), [
    ("  - {name: r, match: {path: /x, model: []}, primary: a}\n", "routes[0].match.model: give one or more"),
    ("  - {name: r, match: {path: /x, model: {a: 1}}, primary: a}\n", "routes[0].match.model: expected"),
    ("  - {name: r, match: {path: /x}, primary: a, fallback: [c]}\n", "routes[0].fallback[0]: unknown backend 'c'"),
    ("  - {name: r, match: {path: /x}, primary: a, fallback: [b, b]}\n", "routes[0].fallback: give one or more distinct"),
    ("  - {name: r, match: {path: /x}, primary: a, first_token_timeout: 1s}\n",
     "routes[0].first_token_timeout: needs a fallback list"),
    ("  - {name: r, match: {path: /x}, primary: a, shadow: {backend: b, compare: {judge: {url: 'http://j:1', "
     "model: j}}}}\n", "routes[0].shadow.compare.judge: a judge compares free text"),
    ("  - {name: r, match: {path: /x}, primary: a, shadow: {backend: b, compare: {format: openai, judge: "
     "{url: 'http://j:1/v1', model: j, colour: red}}}}\n", "routes[0].shadow.compare.judge.colour: unknown key"),
    ("  - {name: r, match: {path: /x}, primary: a, shadow: {backend: b, compare: {format: openai, judge: "
     "{model: j, sample_percent: 0}}}}\n", "routes[0].shadow.compare.judge.url: required key is missing"),
    ("  - {name: r, match: {path: /x}, primary: a, candidate: b, rollout: {gates: {max_ttft_ratio: 1.05}}}\n",
     "max_ttft_ratio must exceed"),
])
def test_llm_config_errors(routes: str, expected: str) -> None:
    found = errors(routes)
    assert any(expected in e and e.startswith("llm.yaml:") for e in found), found


def test_model_routes_match_by_body_and_refuse_unreadable_models() -> None:
    table = config("""\
  - {name: llama, match: {path: /v1/chat/completions, model: ["llama-3-*", exact-name]}, primary: a}
  - {name: other, match: {path: /v1/chat/completions, model: "*"}, primary: b}
  - {name: completions, match: {path: /v1/completions, model: "x"}, primary: b}
  - {name: rest, match: {path_prefix: /v1/completions}, primary: b}
""")
    def match(path: str, body: bytes) -> str | None:
        route = table.match("POST", path, lambda _: None, body)
        return route.name if route else None

    assert match("/v1/chat/completions", b'{"model": "llama-3-8b"}') == "llama"
    assert match("/v1/chat/completions", b'{"model": "exact-name"}') == "llama"
    assert match("/v1/chat/completions", b'{"model": "exact-name-2"}') == "other"
    with pytest.raises(BadModel, match="not valid JSON"):
        match("/v1/chat/completions", b"{")
    assert match("/v1/completions", b"{") == "rest"  # another route takes it: no 400
    assert match("/v1/other", b"{") is None  # model routes not among the candidates: body never read
    for body, message in [(b'{"model": null}', "must be a string"), (b'{"prompt": "x"}', 'no "model"')]:
        with pytest.raises(BadModel, match=message):
            body_model(body)


def test_rewrite_keeps_bytes_when_nothing_changes() -> None:
    body = b'{ "model" : "served-a", "messages": [] }'
    assert rewrite_model(body, "served-a") is body
    assert rewrite_model(b"not json", "m") == b"not json"
    assert json.loads(rewrite_model(b'{"model": "x", "n": "\xc3\xa9"}', "y")) == {"model": "y", "n": "\u00e9"}


def sse(*docs: object) -> bytes:
    return b"".join(b"data: " + json.dumps(d).encode() + b"\n\n" for d in docs) + b"data: [DONE]\n\n"


def delta(text: str | None, finish: str | None = None) -> dict[str, object]:
    return {"choices": [{"index": 0, "delta": {"content": text} if text else {}, "finish_reason": finish}]}


def test_meter_reads_streams_split_anywhere() -> None:
    stream = sse(delta(None), delta("Hel"), delta("lo"), delta(" you"), delta(None, "length"),
                 {"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 3}})
    meter = TokenMeter(keep_text=True)
    meter.start(10.0)
    meter.head([(b"content-type", b"Content-Type", b"text/event-stream; charset=utf-8")])
    times = iter(range(11, 1000))
    for i in range(0, len(stream), 7):  # events cut mid-line
        meter.feed(stream[i:i + 7], float(next(times)))
    o = meter.outcome(2000.0)
    assert (o.streamed, o.input_tokens, o.output_tokens, o.usage, o.finish_reason, o.text) == \
        (True, 7, 3, "reported", "length", "Hello you")
    assert o.ttft is not None and o.ttft > 0 and o.tpot is not None and o.tpot > 0


def test_meter_counts_without_usage_and_reads_whole_answers() -> None:
    meter = TokenMeter()
    meter.start(0.0)
    meter.head([(b"content-type", b"Content-Type", b"text/event-stream")])
    meter.feed(sse(delta("a"), delta("b"), delta("c")), 1.0)
    o = meter.outcome(1.0)
    assert (o.output_tokens, o.usage, o.ttft, o.tpot) == (3, "counted", 1.0, None)  # same instant: no gap to time
    whole = TokenMeter()
    whole.start(0.0)
    whole.head([(b"content-type", b"Content-Type", b"application/json")])
    whole.feed(json.dumps({"choices": [{"message": {"content": "one two"}, "finish_reason": "stop"}]}).encode(), 0.5)
    o = whole.outcome(2.0)
    assert (o.streamed, o.ttft, o.tpot, o.output_tokens, o.usage, o.finish_reason) == \
        (False, 2.0, None, 2, "counted", "stop")


@pytest.mark.parametrize(("value", "expected"), [(b"2", 2.0), (b"0.5", 0.5), (b"-3", 0.0), (b"9999", 300.0),
                                                 (b"Wed, 21 Oct 2015 07:28:00 GMT", 1.0)])
def test_retry_after(value: bytes, expected: float) -> None:
    assert retry_after([(b"retry-after", b"Retry-After", value)], 1.0) == expected


@pytest.mark.parametrize(("content", "verdict"), [("A", "A"), (" b.", "B"), ("tie", "TIE"), ("A is better", None),
                                                  (None, None)])
def test_judge_verdicts(content: str | None, verdict: str | None) -> None:
    assert read_verdict({"choices": [{"message": {"content": content}}]}) == verdict
    assert read_verdict({"oops": 1}) is None


def test_judge_results_are_for_the_candidate_whatever_the_order() -> None:
    assert [candidate_result(v, shadow_first) for v, shadow_first in
            [("A", True), ("B", True), ("A", False), ("B", False), ("TIE", True)]] == \
        ["win", "loss", "loss", "win", "tie"]
    assert question_of(b'{"messages": [{"role": "user", "content": "hi"}]}') == "user: hi"
    assert question_of(b"garbage") == ""


POLICY = RolloutPolicy(steps=(0, 100), min_samples=50,
                       gates=Gates(None, None, None, None, max_ttft_ratio=1.5, max_tpot_ratio=1.5,
                                   min_judge_win_rate=0.5))
FAST, SLOW = latency_histogram([0.02] * 100), latency_histogram([0.06] * 100)


@pytest.mark.parametrize(("evidence", "expected"), [
    (LlmEvidence(), {Gate.TTFT: Verdict.INCONCLUSIVE, Gate.TPOT: Verdict.INCONCLUSIVE,
                     Gate.JUDGE: Verdict.INCONCLUSIVE}),
    (LlmEvidence((FAST, FAST), (FAST, FAST), (10, 10), 70, 0, 30),
     {Gate.TTFT: Verdict.PASS, Gate.TPOT: Verdict.PASS, Gate.JUDGE: Verdict.PASS}),
    (LlmEvidence((FAST, SLOW), (FAST, FAST), (10, 10), 25, 0, 75),
     {Gate.TTFT: Verdict.FAIL, Gate.TPOT: Verdict.PASS, Gate.JUDGE: Verdict.FAIL}),
    (LlmEvidence((FAST, FAST), (FAST, SLOW), (10, 10), 0, 100, 0),  # all ties: exactly 1/2, never above
     {Gate.TTFT: Verdict.PASS, Gate.TPOT: Verdict.FAIL, Gate.JUDGE: Verdict.INCONCLUSIVE}),
])
def test_llm_gates(evidence: LlmEvidence, expected: dict[Gate, Verdict]) -> None:
    assert {g.name: g.verdict for g in llm_gates(evidence, POLICY)} == expected


def test_window_llm_evidence_survives_persistence() -> None:
    from router.analysis.llm import LlmOutcome
    from router.control.window import WindowCounters

    key = ("v1", "v2")
    w = WindowCounters(key, False, 0.0)
    w.llm.record(False, LlmOutcome(True, 0.05, 0.01, 7, 10, "reported", "stop"))
    w.llm.record(True, LlmOutcome(True, 0.15, 0.02, 7, 30, "counted", "stop"))
    w.llm.record(True, LlmOutcome(False, 0.4, None, 7, None, "none", None))  # whole answer: no TTFT sample
    for result in ("win", "win", "tie", "loss", "timeout"):
        w.llm.verdict(result)
    back = WindowCounters.from_json(key, 0.0, json.loads(json.dumps(w.to_json())))
    ev = back.llm.evidence()
    assert ev == w.llm.evidence() and (ev.wins, ev.ties, ev.losses) == (2, 1, 1)
    assert (sum(ev.ttft[0]), sum(ev.ttft[1]), ev.output_tokens) == (1, 1, (10, 30))
    assert back.llm.output_summary() == {"primary": 10.0, "candidate": 30.0, "ratio": 3.0}
    old = w.to_json()
    del old["llm"]  # a state file from before LLM evidence existed still loads
    assert WindowCounters.from_json(key, 0.0, old).llm.evidence() == LlmEvidence()


_JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
                     lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                     max_leaves=20)


@settings(max_examples=300, deadline=None)
@given(_JSON)
def test_the_compact_encoder_writes_what_json_dumps_writes(doc: object) -> None:
    """rewrite_model's encoder is built once instead of per call: its output must not change."""
    assert llm._compact(doc) == json.dumps(doc, ensure_ascii=False, separators=(",", ":"))


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=40), _JSON.map(lambda d: json.dumps(d).encode("utf-8")),
                 _JSON.map(lambda d: json.dumps(d).encode("utf-16")), _JSON.map(lambda d: b"\xef\xbb\xbf" + json.dumps(d).encode())))
def test_loads_json_answers_as_json_loads(data: bytes) -> None:
    """The same document, or the same kind of error, as json.loads for any bytes (UTF-16, a BOM, junk)."""
    def outcome(fn: Any) -> object:
        try:
            return ("ok", json.dumps(fn(data), sort_keys=True))
        except (ValueError, RecursionError) as exc:
            return ("error", type(exc))
    assert outcome(llm.loads_json) == outcome(json.loads)
