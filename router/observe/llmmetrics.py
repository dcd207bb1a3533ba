"""LLM metric families, named after the OpenTelemetry GenAI semantic conventions as an OTel
collector maps them to Prometheus: `gen_ai.server.time_to_first_token` (s) becomes
`gen_ai_server_time_to_first_token_seconds`, `gen_ai.client.token.usage` ({token}) becomes
`gen_ai_client_token_usage` with the `gen_ai.token.type` attribute as the `gen_ai_token_type` label.
Route and backend label them instead of the request's model name, which is client-chosen and so
unbounded. The router's own LLM counters (fallbacks, judge, usage source) keep the router_ prefix.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric

from router.analysis.histogram import export_buckets
from router.control.llmstats import TOKEN_BUCKETS, BackendLlm, LlmState, TokenHistogram

# The bucket boundaries the OpenTelemetry GenAI conventions advise for these two metrics.
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
TPOT_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5)


def llm_metrics(llm: LlmState) -> Iterator[Metric]:
    ttft = HistogramMetricFamily("gen_ai_server_time_to_first_token_seconds", "Time from the request sent to "
                                 "the backend to its first content token (whole answer when not streamed).",
                                 labels=["route", "backend"])
    tpot = HistogramMetricFamily("gen_ai_server_time_per_output_token_seconds", "Mean time between output "
                                 "tokens after the first, streamed answers.", labels=["route", "backend"])
    tokens = HistogramMetricFamily("gen_ai_client_token_usage", "Tokens per answer, by type (from the answer's "
                                   "usage, else counted: see router_llm_responses).",
                                   labels=["route", "backend", "gen_ai_token_type"])
    finish = CounterMetricFamily("router_llm_finish_reasons", "Answers by finish reason.",
                                 labels=["route", "backend", "reason"])
    usage = CounterMetricFamily("router_llm_responses", "LLM answers by where their token counts came from "
                                "(reported usage, counted content events, none).", labels=["route", "backend", "usage"])
    for (route, backend), b in sorted(llm.by_backend.items()):
        _add(ttft, tpot, tokens, [route, backend], b)
        for reason, n in sorted(b.finish.items()):
            finish.add_metric([route, backend, reason], n)
        for source, n in sorted(b.usage.items()):
            usage.add_metric([route, backend, source], n)
    yield from (ttft, tpot, tokens, finish, usage)
    yield from _shadow(llm)
    fallbacks = CounterMetricFamily("router_llm_fallbacks", "Requests sent on to a fallback backend, by the "
                                    "backend they left and why.", labels=["route", "backend", "reason"])
    for (route, backend, reason), n in sorted(llm.fallbacks.items()):
        fallbacks.add_metric([route, backend, reason], n)
    yield fallbacks
    judge = CounterMetricFamily("router_llm_judge", "Judged live/shadow pairs: win, tie, loss for the candidate, "
                                "or why none (dropped, timeout, unparseable, error...).", labels=["route", "result"])
    for (route, result), n in sorted(llm.judge.items()):
        judge.add_metric([route, result], n)
    yield judge


def _shadow(llm: LlmState) -> Iterator[Metric]:
    ttft = HistogramMetricFamily("router_llm_shadow_time_to_first_token_seconds", "Time to first token of "
                                 "mirrored requests, per side, over the same requests.", labels=["route", "side"])
    tpot = HistogramMetricFamily("router_llm_shadow_time_per_output_token_seconds", "Time per output token of "
                                 "mirrored requests, per side.", labels=["route", "side"])
    tokens = HistogramMetricFamily("router_llm_shadow_token_usage", "Tokens per answer of mirrored requests, "
                                   "per side.", labels=["route", "side", "gen_ai_token_type"])
    for (route, side), b in sorted(llm.shadow.items()):
        _add(ttft, tpot, tokens, [route, side], b)
    yield from (ttft, tpot, tokens)


def _add(ttft: HistogramMetricFamily, tpot: HistogramMetricFamily, tokens: HistogramMetricFamily,
         labels: list[str], b: BackendLlm) -> None:
    ttft.add_metric(labels, export_buckets(b.ttft, TTFT_BUCKETS), sum_value=b.ttft.sum)
    tpot.add_metric(labels, export_buckets(b.tpot, TPOT_BUCKETS), sum_value=b.tpot.sum)
    for kind, h in (("input", b.input), ("output", b.output)):
        tokens.add_metric([*labels, kind], _tokens(h), sum_value=h.sum)




def _tokens(h: TokenHistogram) -> list[tuple[str, float]]:
    out, cumulative = [], 0
    for bound, n in zip(TOKEN_BUCKETS, h.counts, strict=False):
        cumulative += n
        out.append((str(bound), float(cumulative)))
    out.append(("+Inf", float(cumulative + h.counts[-1])))
    return out
