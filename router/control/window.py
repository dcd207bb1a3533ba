"""The evidence of one route's current rollout step: summable integer counters.

Owned by the ledger, fed with outcome records, read by the rollout loop as a frozen
`StepEvidence`. Everything is an integer count or a fixed-bucket histogram, so the windows of
several router processes add up field by field.
"""

from __future__ import annotations

import bisect
from typing import Any, ClassVar, Final

from router.analysis.decision import EMPTY_HISTOGRAM, LATENCY_BUCKETS_S, RolloutPolicy, SideCounts, StepEvidence
from router.analysis.rollout_types import PairedLatency
from router.control.llmstats import LlmWindow

# a Final alias: compiled code reads it from a C static, not a module attribute lookup per call
_bisect_left: Final = bisect.bisect_left

_THRESHOLDS = len(LATENCY_BUCKETS_S)  # thresholds at every finite bound


def latency_factors(policy: RolloutPolicy) -> tuple[float, float] | None:
    """The factors the paired latency test counts exceedances at: gate x f (pass) and gate / f (fail)."""
    g = policy.gates
    if g.max_latency_ratio is None:
        return None
    return g.max_latency_ratio * g.latency_indifference, g.max_latency_ratio / g.latency_indifference


class LatencyPairs:
    """Exceedances of the same request on both sides, for every threshold t = LATENCY_BUCKETS_S[i]
    at once: for each factor c, a pair is *worse* at i when the candidate took longer than c x t and
    the primary at most t, *better* when the reverse. Both are contiguous ranges of i, kept as
    range starts and ends (two increments per pair and kind; the count at i is starts up to i minus
    ends up to i), so the counters stay nonnegative integers that sum across processes."""

    __slots__ = ("factors", "ranges")

    KINDS: ClassVar[tuple[str, str]] = ("worse", "better")  # ClassVar: a class constant to the native build

    def __init__(self, factors: tuple[float, float]) -> None:
        self.factors = factors
        # [factor][kind] -> (starts, ends), each indexed 0.._THRESHOLDS
        self.ranges = [[([0] * (_THRESHOLDS + 1), [0] * (_THRESHOLDS + 1)) for _ in self.KINDS] for _ in factors]

    def record(self, live_s: float, shadow_s: float) -> None:
        above = _bisect_left(LATENCY_BUCKETS_S, live_s)  # primary > t_i exactly for i < above
        for ranges, factor in zip(self.ranges, self.factors, strict=True):
            over = _bisect_left(LATENCY_BUCKETS_S, shadow_s / factor)  # candidate > factor x t_i for i < over
            kind, lo, hi = (0, above, over) if over > above else (1, over, above)
            if lo < hi:
                ranges[kind][0][lo] += 1
                ranges[kind][1][hi] += 1

    def counts(self) -> PairedLatency:
        def per_threshold(starts: list[int], ends: list[int]) -> tuple[int, ...]:
            out, open_ = [], 0
            for i in range(_THRESHOLDS):
                open_ += starts[i] - ends[i]
                out.append(open_)
            return tuple(out)

        by = [[per_threshold(*r) for r in kinds] for kinds in self.ranges]
        return PairedLatency(self.factors, (by[0][0], by[1][0]), (by[0][1], by[1][1]))

    def to_json(self) -> dict[str, Any]:
        def sparse(arr: list[int]) -> dict[str, int]:
            return {str(i): n for i, n in enumerate(arr) if n}

        return {str(k): {kind: {"s": sparse(starts), "e": sparse(ends)}
                         for kind, (starts, ends) in zip(self.KINDS, kinds, strict=True)}
                for k, kinds in enumerate(self.ranges)}

    @classmethod
    def from_json(cls, factors: tuple[float, float], data: dict[str, Any]) -> LatencyPairs:
        pairs = cls(factors)
        for k, kinds in enumerate(pairs.ranges):
            for kind, r in zip(cls.KINDS, kinds, strict=True):
                for end, arr in zip("se", r, strict=True):
                    for i, n in data.get(str(k), {}).get(kind, {}).get(end, {}).items():
                        arr[int(i)] = int(n)
        counts = pairs.counts()
        if min(min(x) for x in counts.worse + counts.better) < 0:
            raise ValueError("paired latency ranges end before they start")
        return pairs


class WindowSide:
    """One side's counters in the window: requests, errors, latency buckets, feedback.

    `errors` are 5xx answers and transport failures (and 4xx where the route opts in with
    `rollout.count_4xx`); `client_errors` counts 4xx answers apart, reported but not gated.
    """

    __slots__ = ("client_errors", "correct", "errors", "labelled", "latency", "requests")

    def __init__(self) -> None:
        self.requests = 0
        self.errors = 0
        self.client_errors = 0
        self.latency = [0] * len(EMPTY_HISTOGRAM)
        self.labelled = 0  # predictions of this step that got feedback ...
        self.correct = 0  # ... and were right

    def record(self, ok: bool, seconds: float, client_error: bool = False) -> None:
        self.requests += 1
        if not ok:
            self.errors += 1
        self.client_errors += client_error
        self.latency[_bisect_left(LATENCY_BUCKETS_S, seconds)] += 1

    def counts(self) -> SideCounts:
        return SideCounts(self.requests, self.errors, tuple(self.latency), self.labelled, self.correct)

    def to_json(self) -> dict[str, Any]:
        return {"requests": self.requests, "errors": self.errors, "client_errors": self.client_errors,
                "labelled": self.labelled, "correct": self.correct,
                "latency": {str(i): n for i, n in enumerate(self.latency) if n}}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> WindowSide:
        side = cls()
        side.requests, side.errors = int(data["requests"]), int(data["errors"])
        side.labelled, side.correct = int(data.get("labelled", 0)), int(data.get("correct", 0))
        side.client_errors = int(data.get("client_errors", 0))
        for i, n in data["latency"].items():
            side.latency[int(i)] = int(n)
        side.counts()  # validates
        return side


class WindowCounters:
    """The evidence of one route's current step window, for the rollout of `key` = (primary, candidate)."""

    __slots__ = ("agreements", "candidate", "comparisons", "count_4xx", "discordant_candidate", "discordant_primary",
                 "factors", "key", "labelled_pairs", "latency_pairs", "llm", "only_candidate_right",
                 "only_primary_right", "order_pairs", "order_worse_fail", "order_worse_pass", "pairs", "primary",
                 "shadowed", "started_at", "unmatched")

    def __init__(self, key: tuple[str, str], shadowed: bool, started_at: float, count_4xx: bool = False,
                 latency_factors: tuple[float, float] | None = None) -> None:
        self.key = key
        self.count_4xx = count_4xx  # rollout.count_4xx: a 4xx counts as the model's error
        self.shadowed = shadowed
        self.started_at = started_at  # feedback for predictions made before this is not evidence
        self.comparisons = 0
        self.agreements = 0
        self.primary = WindowSide()
        self.candidate = WindowSide()
        self.pairs = 0  # mirrored requests counted on both sides, for the paired error test ...
        self.discordant_candidate = 0  # ... where only the candidate erred
        self.discordant_primary = 0  # ... where only the primary erred
        self.llm = LlmWindow()  # token timings and judge verdicts (LLM routes)
        # Shadowed steps: exceedances of the same request, for the paired latency test (None: not counted)
        self.latency_pairs = LatencyPairs(latency_factors) if latency_factors is not None and shadowed else None
        # Per-request comparisons for the stochastic-order test: the same request on shadowed steps,
        # requests paired in order of arrival on canary steps (independent draws from each side)
        self.factors = latency_factors
        self.order_pairs = self.order_worse_pass = self.order_worse_fail = 0
        self.unmatched: list[float | None] = [None, None]  # a canary side's latest sample waiting for the other's
        self.labelled_pairs = 0  # shadowed requests whose feedback scored both predictions ...
        self.only_candidate_right = 0  # ... where only the candidate's was right
        self.only_primary_right = 0  # ... where only the primary's was

    def live(self, backend: str, status: int, seconds: float) -> None:
        """A live request finished (evidence only when the step is not shadowed)."""
        if self.shadowed or status == 499:  # 499: the client left; says nothing about the model
            return
        side = self.candidate if backend == self.key[1] else self.primary if backend == self.key[0] else None
        if side is not None:
            side.record(self._ok(status, None), seconds, 400 <= status < 500)
            self._match(side is self.candidate, seconds)

    def _match(self, candidate: bool, seconds: float) -> None:
        """Pair a canary step's samples in order of arrival: draws from two independent streams."""
        other = self.unmatched[not candidate]
        if other is None:
            self.unmatched[candidate] = seconds
            return
        self.unmatched[not candidate] = None
        self._order(other if candidate else seconds, seconds if candidate else other)

    def _order(self, primary_s: float, candidate_s: float) -> None:
        if self.factors is None:
            return
        self.order_pairs += 1
        self.order_worse_pass += candidate_s > self.factors[0] * primary_s
        self.order_worse_fail += candidate_s > self.factors[1] * primary_s

    def fallback(self) -> None:
        """A request drawn for the candidate went to the primary: no candidate endpoint was in
        rotation. For the rollout that is the candidate failing the request."""
        if not self.shadowed:
            self.candidate.requests += 1
            self.candidate.errors += 1

    def _ok(self, status: int, error: str | None) -> bool:
        """No server error (5xx) or transport failure; a 4xx is the client's, unless counted."""
        return error is None and status < (400 if self.count_4xx else 500)

    def pair(self, live_status: int, live_error: str | None, live_s: float,
             shadow_status: int, shadow_error: str | None, shadow_s: float) -> None:
        """A mirrored request finished on both sides (shadowed steps)."""
        live_ok, shadow_ok = self._ok(live_status, live_error), self._ok(shadow_status, shadow_error)
        self.primary.record(live_ok, live_s, live_error is None and 400 <= live_status < 500)
        self.candidate.record(shadow_ok, shadow_s, shadow_error is None and 400 <= shadow_status < 500)
        self.pairs += 1
        self.discordant_candidate += live_ok and not shadow_ok
        self.discordant_primary += shadow_ok and not live_ok
        if self.latency_pairs is not None:
            self.latency_pairs.record(live_s, shadow_s)
        self._order(live_s, shadow_s)

    def compared(self, agree: bool) -> None:
        self.comparisons += 1
        self.agreements += agree

    def scored(self, backend: str, correct: bool) -> None:
        side = self.candidate if backend == self.key[1] else self.primary if backend == self.key[0] else None
        if side is not None:
            side.labelled += 1
            side.correct += correct

    def scored_pair(self, live_correct: bool, shadow_correct: bool) -> None:
        """Feedback scored both predictions of one shadowed request against the same truth."""
        self.scored(self.key[0], live_correct)
        self.scored(self.key[1], shadow_correct)
        self.labelled_pairs += 1
        self.only_candidate_right += shadow_correct and not live_correct
        self.only_primary_right += live_correct and not shadow_correct

    def evidence(self) -> StepEvidence:
        return StepEvidence(self.comparisons, self.agreements, self.primary.counts(), self.candidate.counts(),
                            self.pairs, self.discordant_candidate, self.discordant_primary, self.labelled_pairs,
                            self.only_candidate_right, self.only_primary_right,
                            None if self.latency_pairs is None else self.latency_pairs.counts(), self.order_pairs,
                            self.order_worse_pass, self.order_worse_fail)

    def to_json(self) -> dict[str, Any]:
        return {"shadowed": self.shadowed, "comparisons": self.comparisons, "agreements": self.agreements,
                "primary": self.primary.to_json(), "candidate": self.candidate.to_json(), "pairs": self.pairs,
                "discordant_candidate": self.discordant_candidate, "discordant_primary": self.discordant_primary,
                "labelled_pairs": self.labelled_pairs, "only_candidate_right": self.only_candidate_right,
                "only_primary_right": self.only_primary_right, "llm": self.llm.to_json(),
                "order_pairs": self.order_pairs, "order_worse_pass": self.order_worse_pass,
                "order_worse_fail": self.order_worse_fail,
                **({} if self.factors is None else {"latency_factors": list(self.factors)}),
                **({} if self.latency_pairs is None else {"latency_pairs": self.latency_pairs.to_json()})}

    @classmethod
    def from_json(cls, key: tuple[str, str], started_at: float, data: dict[str, Any],
                  count_4xx: bool = False, latency_factors: tuple[float, float] | None = None) -> WindowCounters:
        """`latency_factors`: those the saved window counted at, when the data does not name them
        (the cluster's summed hashes keep integers only)."""
        saved = data.get("latency_factors")
        factors = (float(saved[0]), float(saved[1])) if saved else latency_factors
        c = cls(key, bool(data["shadowed"]), started_at, count_4xx, factors)
        c.comparisons, c.agreements = int(data["comparisons"]), int(data["agreements"])
        c.primary, c.candidate = WindowSide.from_json(data["primary"]), WindowSide.from_json(data["candidate"])
        # Windows saved before pairs were counted have none: they are judged unpaired.
        c.pairs = int(data.get("pairs", 0))
        c.discordant_candidate = int(data.get("discordant_candidate", 0))
        c.discordant_primary = int(data.get("discordant_primary", 0))
        c.labelled_pairs = int(data.get("labelled_pairs", 0))
        c.only_candidate_right = int(data.get("only_candidate_right", 0))
        c.only_primary_right = int(data.get("only_primary_right", 0))
        c.order_pairs = int(data.get("order_pairs", 0))
        c.order_worse_pass = int(data.get("order_worse_pass", 0))
        c.order_worse_fail = int(data.get("order_worse_fail", 0))
        if factors is not None and c.shadowed:
            c.latency_pairs = LatencyPairs.from_json(factors, data.get("latency_pairs", {}))
        if "llm" in data:
            c.llm = LlmWindow.from_json(data["llm"])
        c.evidence()  # validates
        return c
