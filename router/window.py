"""The evidence of one route's current rollout step: summable integer counters.

Owned by the ledger, fed with outcome records, read by the rollout loop as a frozen
`StepEvidence`. Everything is an integer count or a fixed-bucket histogram, so the windows of
several router processes add up field by field.
"""

from __future__ import annotations

import bisect
from typing import Any

from router.decision import EMPTY_HISTOGRAM, LATENCY_BUCKETS_S, SideCounts, StepEvidence


class WindowSide:
    """One side's counters in the window: requests, server errors, latency buckets, feedback."""

    __slots__ = ("correct", "errors", "labelled", "latency", "requests")

    def __init__(self) -> None:
        self.requests = 0
        self.errors = 0
        self.latency = [0] * len(EMPTY_HISTOGRAM)
        self.labelled = 0  # predictions of this step that got feedback ...
        self.correct = 0  # ... and were right

    def record(self, ok: bool, seconds: float) -> None:
        self.requests += 1
        if not ok:
            self.errors += 1
        self.latency[bisect.bisect_left(LATENCY_BUCKETS_S, seconds)] += 1

    def counts(self) -> SideCounts:
        return SideCounts(self.requests, self.errors, tuple(self.latency), self.labelled, self.correct)

    def to_json(self) -> dict[str, Any]:
        return {"requests": self.requests, "errors": self.errors, "labelled": self.labelled, "correct": self.correct,
                "latency": {str(i): n for i, n in enumerate(self.latency) if n}}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> WindowSide:
        side = cls()
        side.requests, side.errors = int(data["requests"]), int(data["errors"])
        side.labelled, side.correct = int(data.get("labelled", 0)), int(data.get("correct", 0))
        for i, n in data["latency"].items():
            side.latency[int(i)] = int(n)
        side.counts()  # validates
        return side


class WindowCounters:
    """The evidence of one route's current step window, for the rollout of `key` = (primary, candidate)."""

    __slots__ = ("agreements", "candidate", "comparisons", "discordant_candidate", "discordant_primary", "key",
                 "pairs", "primary", "shadowed", "started_at")

    def __init__(self, key: tuple[str, str], shadowed: bool, started_at: float) -> None:
        self.key = key
        self.shadowed = shadowed
        self.started_at = started_at  # feedback for predictions made before this is not evidence
        self.comparisons = 0
        self.agreements = 0
        self.primary = WindowSide()
        self.candidate = WindowSide()
        self.pairs = 0  # mirrored requests counted on both sides, for the paired error test ...
        self.discordant_candidate = 0  # ... where only the candidate erred
        self.discordant_primary = 0  # ... where only the primary erred

    def live(self, backend: str, status: int, seconds: float) -> None:
        """A live request finished (evidence only when the step is not shadowed)."""
        if self.shadowed or status == 499:  # 499: the client left; says nothing about the model
            return
        if backend == self.key[1]:
            self.candidate.record(status < 500, seconds)
        elif backend == self.key[0]:
            self.primary.record(status < 500, seconds)

    def fallback(self) -> None:
        """A request drawn for the candidate went to the primary: no candidate endpoint was in
        rotation. For the rollout that is the candidate failing the request."""
        if not self.shadowed:
            self.candidate.requests += 1
            self.candidate.errors += 1

    def pair(self, live_ok: bool, live_s: float, shadow_ok: bool, shadow_s: float) -> None:
        """A mirrored request finished on both sides (shadowed steps)."""
        self.primary.record(live_ok, live_s)
        self.candidate.record(shadow_ok, shadow_s)
        self.pairs += 1
        self.discordant_candidate += live_ok and not shadow_ok
        self.discordant_primary += shadow_ok and not live_ok

    def compared(self, agree: bool) -> None:
        self.comparisons += 1
        self.agreements += agree

    def scored(self, backend: str, correct: bool) -> None:
        side = self.candidate if backend == self.key[1] else self.primary if backend == self.key[0] else None
        if side is not None:
            side.labelled += 1
            side.correct += correct

    def evidence(self) -> StepEvidence:
        return StepEvidence(self.comparisons, self.agreements, self.primary.counts(), self.candidate.counts(),
                            self.pairs, self.discordant_candidate, self.discordant_primary)

    def to_json(self) -> dict[str, Any]:
        return {"shadowed": self.shadowed, "comparisons": self.comparisons, "agreements": self.agreements,
                "primary": self.primary.to_json(), "candidate": self.candidate.to_json(), "pairs": self.pairs,
                "discordant_candidate": self.discordant_candidate, "discordant_primary": self.discordant_primary}

    @classmethod
    def from_json(cls, key: tuple[str, str], started_at: float, data: dict[str, Any]) -> WindowCounters:
        c = cls(key, bool(data["shadowed"]), started_at)
        c.comparisons, c.agreements = int(data["comparisons"]), int(data["agreements"])
        c.primary, c.candidate = WindowSide.from_json(data["primary"]), WindowSide.from_json(data["candidate"])
        # Windows saved before pairs were counted have none: they are judged unpaired.
        c.pairs = int(data.get("pairs", 0))
        c.discordant_candidate = int(data.get("discordant_candidate", 0))
        c.discordant_primary = int(data.get("discordant_primary", 0))
        c.evidence()  # validates
        return c
