"""LLM counters: what the metrics export (per route and backend), what a rollout step window
judges on (per side), and which backends are cooling down after a 429/503 with Retry-After.

Plain ints and lists, as in `runtime.Stats`: cheap to bump, summable across processes.
"""

from __future__ import annotations

import bisect
import math
from collections import defaultdict
from typing import Any, Final

from router.analysis.decision import EMPTY_HISTOGRAM, LATENCY_BUCKETS_S, LlmEvidence
from router.analysis.histogram import Histogram
from router.analysis.llm import LlmOutcome

# a Final alias: compiled code reads it from a C static, not a module attribute lookup per call
_bisect_left: Final = bisect.bisect_left

# OpenTelemetry's advice for gen_ai.client.token.usage buckets (powers of 4).
TOKEN_BUCKETS: tuple[int, ...] = tuple(4**i for i in range(14))


class TokenHistogram:
    """Tokens per response, over TOKEN_BUCKETS (then +Inf), with their sum."""

    __slots__ = ("counts", "sum")

    def __init__(self) -> None:
        self.counts = [0] * (len(TOKEN_BUCKETS) + 1)
        self.sum = 0

    def observe(self, tokens: int) -> None:
        self.counts[_bisect_left(TOKEN_BUCKETS, tokens)] += 1
        self.sum += tokens


class BackendLlm:
    """One route and backend's LLM figures."""

    __slots__ = ("finish", "input", "output", "tpot", "ttft", "usage")

    def __init__(self) -> None:
        self.ttft = Histogram()
        self.tpot = Histogram()
        self.input = TokenHistogram()
        self.output = TokenHistogram()
        self.finish: defaultdict[str, int] = defaultdict(int)
        self.usage: defaultdict[str, int] = defaultdict(int)  # reported / counted / none

    def record(self, o: LlmOutcome) -> None:
        if o.ttft is not None:
            self.ttft.observe(o.ttft)
        if o.tpot is not None:
            self.tpot.observe(o.tpot)
        if o.input_tokens is not None:
            self.input.observe(o.input_tokens)
        if o.output_tokens is not None:
            self.output.observe(o.output_tokens)
        if o.finish_reason is not None:
            self.finish[o.finish_reason] += 1
        self.usage[o.usage] += 1


class LlmState:
    """Everything LLM the router keeps between requests; survives reloads like `runtime.Stats`."""

    def __init__(self) -> None:
        self.by_backend: dict[tuple[str, str], BackendLlm] = {}
        self.shadow: dict[tuple[str, str], BackendLlm] = {}  # (route, "live" | "shadow") on mirrored requests
        self.fallbacks: defaultdict[tuple[str, str, str], int] = defaultdict(int)  # (route, from backend, reason)
        self.cooldown: dict[str, float] = {}  # backend -> monotonic time it may be used again
        self.judge: defaultdict[tuple[str, str], int] = defaultdict(int)  # (route, win|tie|loss|failure kind)

    def record(self, route: str, backend: str, o: LlmOutcome) -> None:
        b = self.by_backend.get((route, backend))
        if b is None:
            b = self.by_backend[(route, backend)] = BackendLlm()
        b.record(o)

    def record_pair(self, route: str, live: LlmOutcome, shadow: LlmOutcome) -> None:
        for side, o in (("live", live), ("shadow", shadow)):
            b = self.shadow.get((route, side))
            if b is None:
                b = self.shadow[(route, side)] = BackendLlm()
            b.record(o)

    def cooling(self, backend: str, now: float) -> bool:
        until = self.cooldown.get(backend)
        return until is not None and now < until

    def cool(self, backend: str, until: float) -> None:
        self.cooldown[backend] = max(until, self.cooldown.get(backend, 0.0))


class LlmWindow:
    """A rollout step window's LLM evidence: per side (0 primary, 1 candidate) and the judge's verdicts."""

    __slots__ = ("answers", "losses", "output", "ties", "tpot", "ttft", "wins")

    def __init__(self) -> None:
        self.ttft = ([0] * len(EMPTY_HISTOGRAM), [0] * len(EMPTY_HISTOGRAM))
        self.tpot = ([0] * len(EMPTY_HISTOGRAM), [0] * len(EMPTY_HISTOGRAM))
        self.output = [0, 0]  # output tokens ...
        self.answers = [0, 0]  # ... over this many answers
        self.wins = self.ties = self.losses = 0

    def record(self, on_candidate: bool, o: LlmOutcome) -> None:
        side = int(on_candidate)
        # Only streamed answers have a first token distinct from the whole answer.
        if o.streamed and o.ttft is not None:
            self.ttft[side][_bisect_left(LATENCY_BUCKETS_S, o.ttft)] += 1
        if o.tpot is not None:
            self.tpot[side][_bisect_left(LATENCY_BUCKETS_S, o.tpot)] += 1
        if o.output_tokens is not None:
            self.output[side] += o.output_tokens
            self.answers[side] += 1

    def verdict(self, result: str) -> None:
        if result == "win":
            self.wins += 1
        elif result == "tie":
            self.ties += 1
        elif result == "loss":
            self.losses += 1

    def output_summary(self) -> dict[str, float | None]:
        """Mean output tokens per answer on each side, and candidate over primary (decision-log evidence)."""
        means = [self.output[i] / self.answers[i] if self.answers[i] else None for i in (0, 1)]
        p, c = means
        return {"primary": p, "candidate": c, "ratio": c / p if p and c is not None else None}

    def evidence(self) -> LlmEvidence:
        return LlmEvidence((tuple(self.ttft[0]), tuple(self.ttft[1])), (tuple(self.tpot[0]), tuple(self.tpot[1])),
                           (self.output[0], self.output[1]), self.wins, self.ties, self.losses)

    def to_json(self) -> dict[str, Any]:
        def sparse(h: list[int]) -> dict[str, int]:
            return {str(i): n for i, n in enumerate(h) if n}
        return {"ttft": [sparse(h) for h in self.ttft], "tpot": [sparse(h) for h in self.tpot],
                "output": list(self.output), "answers": list(self.answers),
                "judge": [self.wins, self.ties, self.losses]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LlmWindow:
        w = cls()
        for name in ("ttft", "tpot"):
            for side, h in enumerate(data[name]):
                for i, n in h.items():
                    getattr(w, name)[side][int(i)] = int(n)
        w.output = [int(x) for x in data["output"]]
        w.answers = [int(x) for x in data.get("answers", [0, 0])]
        w.wins, w.ties, w.losses = (int(x) for x in data["judge"])
        return w


QUANTILES = {"p50": 0.5, "p95": 0.95, "p99": 0.99}
JUDGED = ("win", "tie", "loss")


def _quantiles(live: Histogram, shadow: Histogram) -> dict[str, dict[str, float | None]]:
    out: dict[str, dict[str, float | None]] = {"live": {}, "shadow": {}, "ratio": {}}
    for name, q in QUANTILES.items():
        a, b = live.quantile(q), shadow.quantile(q)
        out["live"][name], out["shadow"][name] = a, b
        out["ratio"][name] = b / a if a and b is not None else None
    return out


def judge_summary(llm: LlmState, route: str, z: float = 1.96) -> dict[str, Any]:
    """Verdict counts, the candidate's win rate (ties half) with a 95% Wilson interval, and failures."""
    counts = {k: n for (r, k), n in llm.judge.items() if r == route}
    n = sum(counts.get(k, 0) for k in JUDGED)
    out: dict[str, Any] = {k: counts.get(k, 0) for k in JUDGED}
    out["failures"] = {k: v for k, v in counts.items() if k not in JUDGED}
    if n:
        p = (counts.get("win", 0) + counts.get("tie", 0) / 2) / n
        centre, half = (p + z * z / (2 * n)) / (1 + z * z / n), \
            z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
        out.update(win_rate=p, low=max(0.0, centre - half), high=min(1.0, centre + half))
    return out


def llm_report(llm: LlmState, route: str) -> dict[str, Any] | None:
    """The `/shadow` report's LLM part: paired live/shadow figures over the same mirrored requests."""
    live, shadow = llm.shadow.get((route, "live")), llm.shadow.get((route, "shadow"))
    if live is None or shadow is None:
        return None
    def mean(h: TokenHistogram) -> float | None:
        n = sum(h.counts)
        return h.sum / n if n else None
    return {"ttft_seconds": _quantiles(live.ttft, shadow.ttft), "tpot_seconds": _quantiles(live.tpot, shadow.tpot),
            "mean_output_tokens": {"live": mean(live.output), "shadow": mean(shadow.output)},
            "judge": judge_summary(llm, route)}
