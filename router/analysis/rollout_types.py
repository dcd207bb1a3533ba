"""The rollout's vocabulary: phases, actions, the policy, the step's evidence, gate results and
decisions. Plain frozen data with its validation; the statistics live in `router.analysis.gates` and the
transitions in `router.analysis.decision`, which re-exports every name here.
"""

from __future__ import annotations

import enum
from bisect import bisect_left
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import reduce
from itertools import pairwise

from router.analysis.histogram import FINE

__all__ = [
    "BUCKET_FACTOR", "EMPTY_HISTOGRAM", "LATENCY_BUCKETS_S", "TERMINAL", "Action", "Decision", "Gate",
    "GateResult", "Gates", "InvalidTransition", "LlmEvidence", "OperatorAction", "PairedLatency", "Phase",
    "RolloutPolicy",
    "RolloutState",
    "SideCounts", "Snapshot", "StepEvidence", "Verdict", "error_budget", "latency_histogram",
]

# 16 bounds per octave from 1 ms to 60 s (255 bounds; DDSketch-like ~4% relative resolution). A
# bucket only brackets a quantile within its width, so a ratio of two p99s is known no better than
# about the bucket factor squared: the ~1.46 factor of 30 bounds could never show a ratio below 1.25,
# and 8 per octave needs ~2.5x the samples to pass at 1.25. Every 2nd, 4th, ... bound is the same
# float as in the 8, 4, ... per octave series, so an exporter can publish a coarser set by summing.
LATENCY_BUCKETS_S = FINE  # the router's one latency scheme (router.histogram)
BUCKET_FACTOR = 2 ** (1 / 16)
EMPTY_HISTOGRAM: tuple[int, ...] = (0,) * (len(LATENCY_BUCKETS_S) + 1)  # the last bucket is +Inf


class Phase(enum.StrEnum):
    SHADOWING = "shadowing"
    PROGRESSING = "progressing"
    AWAITING_APPROVAL = "awaiting_approval"
    PROMOTED = "promoted"
    ROLLED_BACK = "rolled_back"
    PAUSED = "paused"


TERMINAL = frozenset({Phase.PROMOTED, Phase.ROLLED_BACK})


class Verdict(enum.StrEnum):
    PASS = "pass"
    FAIL = "fail"
    INCONCLUSIVE = "inconclusive"


class Action(enum.StrEnum):
    """What the loop must do. RESUME and RESTART only come from operators."""

    HOLD = "hold"
    ADVANCE = "advance"
    PROMOTE = "promote"
    AWAIT_APPROVAL = "await_approval"
    ROLLBACK = "rollback"
    PAUSE = "pause"
    NONE = "none"
    RESUME = "resume"
    RESTART = "restart"


class OperatorAction(enum.StrEnum):
    PROMOTE = "promote"  # advance one step now, or approve the last one when asked
    APPROVE = "approve"  # approve the last step ahead of time (or now, when asked)
    ROLLBACK = "rollback"
    PAUSE = "pause"
    RESUME = "resume"
    RESTART = "restart"  # start again from the first step after a rollback or pause


class Gate(enum.StrEnum):
    AGREEMENT = "agreement"
    ERROR_RATE = "error_rate"
    LATENCY = "latency"
    ACCURACY = "accuracy"
    TTFT = "ttft"
    TPOT = "tpot"
    JUDGE = "judge"


class InvalidTransition(ValueError):
    """An operator action that the current phase does not allow (HTTP 409).

    `suggest` names the commands that do work from this phase (operator actions, or "finalize"),
    so every refusal can point the operator at one that will be accepted."""

    def __init__(self, message: str, suggest: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.suggest = suggest


# -- policy -------------------------------------------------------------------------------------


_ZERO_GATE_MARGIN = 0.005
LATENCY_TESTS = ("quantile", "stochastic")


def _margin(given: float | None, gate: float | None) -> float:
    """The given half-width, or the gate's own size, kept within half the room left to 1 so that
    every gate valid on its own has a zone that fits."""
    if given is not None:
        return given
    size = abs(gate or 0.0)
    return min(size, (1 - size) / 2) if size else _ZERO_GATE_MARGIN


def _zone_fits(gate: float, half_width: float) -> bool:
    return half_width > 0 and gate - half_width > -1 and gate + half_width < 1


@dataclass(frozen=True, slots=True)
class Gates:
    """Thresholds a step must meet; None switches a gate off (at least one must stay on)."""

    min_agreement: float | None = 0.99
    max_latency_ratio: float | None = 1.25
    max_error_rate_increase: float | None = 0.005
    min_accuracy_delta: float | None = None
    agreement_indifference: float = 0.005  # true agreement within this of the gate may go either way
    latency_quantile: float = 0.99
    # A true value within these of the gate may go either way. None: the gate's own size, so a
    # candidate no worse than the primary passes and one twice the allowance worse fails (at most
    # half the room left to 1; _ZERO_GATE_MARGIN when the gate is 0).
    error_indifference: float | None = None
    accuracy_indifference: float | None = None
    latency_indifference: float = 1.25  # a factor: a ratio within gate / f .. gate x f may go either way
    # LLM gates (router.gates.llm_gates): streamed time to first token and per output token, and the
    # judge's win rate of the candidate (ties count half).
    max_ttft_ratio: float | None = None
    max_tpot_ratio: float | None = None
    min_judge_win_rate: float | None = None
    llm_quantile: float = 0.9  # TTFT/TPOT quantile: p99 would need ~800 streamed samples per side
    # "quantile": the candidate's latency_quantile against gate x the primary's; "stochastic": the
    # whole distribution, from per-request comparisons (router.analysis.stochastic)
    latency_test: str = "quantile"

    def __post_init__(self) -> None:
        problems = []
        if self.count == 0:
            problems.append("at least one gate must be on")
        if self.min_agreement is not None:
            d = self.agreement_indifference
            if not (d > 0 and d < self.min_agreement < 1 - d):
                problems.append("min_agreement +- agreement_indifference must lie strictly within (0, 1)")
        if self.max_latency_ratio is not None and self.max_latency_ratio <= BUCKET_FACTOR**2:
            problems.append(f"max_latency_ratio must exceed {BUCKET_FACTOR**2:.3f}, the latency histogram's resolution")
        if self.max_error_rate_increase is not None and not 0 <= self.max_error_rate_increase < 1:
            problems.append("max_error_rate_increase must lie in [0, 1)")
        elif self.max_error_rate_increase is not None and not _zone_fits(self.max_error_rate_increase,
                                                                         self.error_margin):
            problems.append("max_error_rate_increase +- error_indifference must lie strictly within (-1, 1)")
        if self.min_accuracy_delta is not None and not -1 < self.min_accuracy_delta < 1:
            problems.append("min_accuracy_delta must lie in (-1, 1)")
        elif self.min_accuracy_delta is not None and not _zone_fits(self.min_accuracy_delta,
                                                                    self.accuracy_margin):
            problems.append("min_accuracy_delta +- accuracy_indifference must lie strictly within (-1, 1)")
        if not self.latency_indifference >= 1:
            problems.append("latency_indifference must be at least 1 (a factor around max_latency_ratio)")
        if not 0.5 <= self.latency_quantile < 1:
            problems.append("latency_quantile must lie in [0.5, 1)")
        if self.latency_test not in LATENCY_TESTS:
            problems.append(f"latency_test must be one of {', '.join(LATENCY_TESTS)}, got {self.latency_test!r}")
        problems += _llm_gate_problems(self)
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def error_margin(self) -> float:
        """The error-rate gate's indifference half-width, its default resolved."""
        return _margin(self.error_indifference, self.max_error_rate_increase)

    @property
    def accuracy_margin(self) -> float:
        return _margin(self.accuracy_indifference, self.min_accuracy_delta)

    @property
    def count(self) -> int:
        limits = (self.min_agreement, self.max_latency_ratio, self.max_error_rate_increase, self.min_accuracy_delta,
                  self.max_ttft_ratio, self.max_tpot_ratio, self.min_judge_win_rate)
        return sum(limit is not None for limit in limits)


def _llm_gate_problems(g: Gates) -> list[str]:
    problems = [f"{name} must exceed {BUCKET_FACTOR**2:.3f}, the histogram's resolution"
                for name, v in (("max_ttft_ratio", g.max_ttft_ratio), ("max_tpot_ratio", g.max_tpot_ratio))
                if v is not None and v <= BUCKET_FACTOR**2]
    if g.min_judge_win_rate is not None and not 0 < g.min_judge_win_rate < 1:
        problems.append("min_judge_win_rate must lie in (0, 1)")
    if not 0.5 <= g.llm_quantile < 1:
        problems.append("llm_quantile must lie in [0.5, 1)")
    return problems


@dataclass(frozen=True, slots=True)
class RolloutPolicy:
    """The `rollout:` block of a route, parsed (durations in seconds)."""

    steps: tuple[float, ...] = (0, 5, 25, 50, 100)  # candidate percent per step; 0 = shadow only
    interval_s: float = 30.0
    min_samples: int = 500
    max_duration_s: float = 7200.0
    gates: Gates = field(default_factory=Gates)
    confidence: float = 0.99
    on_failure: Action = Action.ROLLBACK
    on_timeout: Action = Action.PAUSE
    approval: bool = False

    def __post_init__(self) -> None:
        problems = []
        s = self.steps
        if len(s) < 2 or s[-1] != 100 or s[0] < 0 or any(a >= b for a, b in pairwise(s)):
            problems.append("steps must rise strictly from >= 0 to 100, with at least two steps")
        if self.interval_s < 0 or self.max_duration_s <= 0 or self.min_samples < 1:
            problems.append("interval must be >= 0, max_duration > 0 and min_samples >= 1")
        if not 0.5 < self.confidence < 1:
            problems.append("confidence must lie in (0.5, 1)")
        if {self.on_failure, self.on_timeout} - {Action.ROLLBACK, Action.PAUSE}:
            problems.append("on_failure and on_timeout must be rollback or pause")
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def last_step(self) -> int:
        return len(self.steps) - 1


def error_budget(policy: RolloutPolicy) -> tuple[float, float]:
    """(alpha, beta): each gate's chance of a false pass, and of a false failure, per judged step.

    Advancing needs every gate to pass, so one bad gate alone keeps a false advance below alpha.
    A failure needs only one gate, at any of the judged steps (all but the last, which is the
    promotion itself), so beta is alpha split over them (Bonferroni).
    """
    risk = 1 - policy.confidence
    return risk, risk / (policy.last_step * policy.gates.count)


# -- evidence -----------------------------------------------------------------------------------


def _check_counts(pairs: Iterable[tuple[int, int]], histogram: tuple[int, ...] = EMPTY_HISTOGRAM) -> None:
    if any(not 0 <= k <= n for k, n in pairs) or len(histogram) != len(EMPTY_HISTOGRAM) or min(histogram) < 0:
        raise ValueError("counts must satisfy 0 <= hits <= total, and histograms match LATENCY_BUCKETS_S")


def _add(a: tuple[int, ...], b: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(x + y for x, y in zip(a, b, strict=True))


@dataclass(frozen=True, slots=True)
class SideCounts:
    """One side's requests in the step window; shadowed, both sides count the same mirrored requests."""

    requests: int = 0
    errors: int = 0
    latency: tuple[int, ...] = EMPTY_HISTOGRAM  # counts per LATENCY_BUCKETS_S bucket, then +Inf
    labelled: int = 0  # user feedback: responses labelled right or wrong ...
    correct: int = 0  # ... and how many of them were right

    def __post_init__(self) -> None:
        _check_counts([(self.errors, self.requests), (self.correct, self.labelled)], self.latency)

    def __add__(self, other: SideCounts) -> SideCounts:
        return SideCounts(self.requests + other.requests, self.errors + other.errors,
                          _add(self.latency, other.latency), self.labelled + other.labelled,
                          self.correct + other.correct)


@dataclass(frozen=True, slots=True)
class StepEvidence:
    """Counters of the current step window only; evidence from several processes sums with `+`."""

    comparisons: int = 0  # shadowed requests whose outputs were compared ...
    agreements: int = 0  # ... and how many agreed
    primary: SideCounts = field(default_factory=SideCounts)
    candidate: SideCounts = field(default_factory=SideCounts)
    pairs: int = 0  # mirrored requests both sides answered (shadowed steps) ...
    discordant_candidate: int = 0  # ... where only the candidate erred
    discordant_primary: int = 0  # ... where only the primary erred
    labelled_pairs: int = 0  # shadowed requests whose feedback scored both predictions ...
    only_candidate_right: int = 0  # ... where only the candidate's was right
    only_primary_right: int = 0  # ... where only the primary's was
    paired_latency: PairedLatency | None = None  # shadowed steps: exceedances on the same request
    # per-request comparisons for the stochastic-order test: pairs compared, and how many had the
    # candidate slower than gate x f (pass factor) and than gate / f (fail factor) times the primary
    order_pairs: int = 0
    order_worse_pass: int = 0
    order_worse_fail: int = 0

    def __post_init__(self) -> None:
        _check_counts([(self.agreements, self.comparisons),
                       (self.discordant_candidate + self.discordant_primary, self.pairs),
                       (self.only_candidate_right + self.only_primary_right, self.labelled_pairs),
                       (self.order_worse_pass, self.order_pairs), (self.order_worse_fail, self.order_pairs)])

    def __add__(self, other: StepEvidence) -> StepEvidence:
        return StepEvidence(self.comparisons + other.comparisons, self.agreements + other.agreements,
                            self.primary + other.primary, self.candidate + other.candidate,
                            self.pairs + other.pairs, self.discordant_candidate + other.discordant_candidate,
                            self.discordant_primary + other.discordant_primary,
                            self.labelled_pairs + other.labelled_pairs,
                            self.only_candidate_right + other.only_candidate_right,
                            self.only_primary_right + other.only_primary_right,
                            _add_latency(self.paired_latency, other.paired_latency),
                            self.order_pairs + other.order_pairs, self.order_worse_pass + other.order_worse_pass,
                            self.order_worse_fail + other.order_worse_fail)

    @property
    def feedback_paired(self) -> bool:
        """Every labelled prediction on both sides came from a request whose feedback scored both
        (a shadowed step), so the paired accuracy test applies."""
        return 0 < self.labelled_pairs == self.candidate.labelled == self.primary.labelled

    @property
    def paired(self) -> bool:
        """Every request on both sides is a counted pair, so the paired error test applies.
        (A window saved before pairs were counted, or a live canary step, is judged unpaired.)"""
        return 0 < self.pairs == self.candidate.requests == self.primary.requests

    @staticmethod
    def merge(parts: Iterable[StepEvidence]) -> StepEvidence:
        return reduce(StepEvidence.__add__, parts, StepEvidence())


@dataclass(frozen=True, slots=True)
class PairedLatency:
    """Exceedances of the same requests on both sides (shadowed steps), per threshold index i
    (t = LATENCY_BUCKETS_S[i]): `worse[k][i]` counts pairs whose candidate took longer than
    factors[k] x t while the primary took at most t; `better[k][i]` the reverse. k = 0 is the pass
    test's factor (gate x indifference), k = 1 the fail test's (gate / indifference)."""

    factors: tuple[float, float]
    worse: tuple[tuple[int, ...], tuple[int, ...]]
    better: tuple[tuple[int, ...], tuple[int, ...]]

    def __add__(self, other: PairedLatency) -> PairedLatency:
        if self.factors != other.factors:
            raise ValueError("paired latency counted against different factors does not add up")
        return PairedLatency(self.factors, (_add(self.worse[0], other.worse[0]), _add(self.worse[1], other.worse[1])),
                             (_add(self.better[0], other.better[0]), _add(self.better[1], other.better[1])))


def _add_latency(a: PairedLatency | None, b: PairedLatency | None) -> PairedLatency | None:
    return a if b is None else b if a is None else a + b


def latency_histogram(latencies_s: Iterable[float]) -> tuple[int, ...]:
    """Bucket counts over LATENCY_BUCKETS_S (Prometheus `le` semantics, then +Inf)."""
    counts = [0] * len(EMPTY_HISTOGRAM)
    for value in latencies_s:
        counts[bisect_left(LATENCY_BUCKETS_S, value)] += 1
    return tuple(counts)


@dataclass(frozen=True, slots=True)
class RolloutState:
    """What persists between decisions: the phase, the step and whether the last step is approved."""

    phase: Phase
    step_index: int = 0
    approved: bool = False


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything `decide` reads. Times are seconds on one clock; the rollout start must survive
    restarts, so the loop uses wall time or persists offsets."""

    state: RolloutState
    evidence: StepEvidence
    now: float
    step_started_at: float
    rollout_started_at: float
    shadowed: bool = False  # the candidate received mirrored traffic in this step (agreement applies)
    feedback: bool = False  # user feedback is collected in this step (accuracy applies if configured)
    llm: LlmEvidence | None = None  # token timings and judge verdicts (LLM routes only)


@dataclass(frozen=True, slots=True)
class LlmEvidence:
    """Per side (primary, candidate): histograms over LATENCY_BUCKETS_S of streamed time to first
    token and time per output token, output tokens; and the judge's verdicts for the candidate."""

    ttft: tuple[tuple[int, ...], tuple[int, ...]] = (EMPTY_HISTOGRAM, EMPTY_HISTOGRAM)
    tpot: tuple[tuple[int, ...], tuple[int, ...]] = (EMPTY_HISTOGRAM, EMPTY_HISTOGRAM)
    output_tokens: tuple[int, int] = (0, 0)
    wins: int = 0
    ties: int = 0
    losses: int = 0


@dataclass(frozen=True, slots=True)
class GateResult:
    """One gate's verdict, the test boundaries it was read from, and a confidence interval.

    `low`/`high` are the sequential test's boundaries inverted into the gate's units, not a
    confidence interval: lower-is-better gates (error rate, latency) pass when `high <= threshold`
    and fail when `low > threshold`; higher-is-better gates (agreement, accuracy) pass when
    `low >= threshold` and fail when `high < threshold`. The indifference zone lets them sit inside
    a confidence interval. `ci_low`/`ci_high` is one: a confidence sequence at `confidence`, which
    covers the true value at every look. `zone` is the indifference zone around the threshold.
    None is an unbounded side (no information yet).
    """

    name: Gate
    verdict: Verdict
    estimate: float | None
    low: float | None
    high: float | None
    threshold: float
    n: int
    ci_low: float | None = None
    ci_high: float | None = None
    confidence: float | None = None
    zone: tuple[float, float] | None = None
    paired: bool = False  # the test read discordant pairs (a shadowed step)
    method: str | None = None  # the test used, for the log: "paired SPRT", "unpaired quantile", ...

    def __str__(self) -> str:
        def f(x: float | None) -> str:
            return "?" if x is None else f"{x:.4g}"
        ci = "" if self.confidence is None else \
            f"; {self.confidence:.4g} confidence interval [{f(self.ci_low)}, {f(self.ci_high)}]"
        paired = f", {self.method}" if self.method else ", paired" if self.paired else ""
        return (f"{self.name} {self.verdict}: {f(self.estimate)} vs {self.threshold:g} (n={self.n}{paired}{ci}; "
                f"test boundaries [{f(self.low)}, {f(self.high)}])")

    def to_json(self) -> dict[str, object]:
        """The decision log's record of this gate (test boundaries and the interval named apart)."""
        return {"gate": str(self.name), "verdict": str(self.verdict), "estimate": self.estimate,
                "low": self.low, "high": self.high, "bounds": "sequential test boundaries",
                "ci_low": self.ci_low, "ci_high": self.ci_high, "ci_confidence": self.confidence,
                "zone": list(self.zone) if self.zone else None, "paired": self.paired, "test": self.method,
                "threshold": self.threshold, "n": self.n}


@dataclass(frozen=True, slots=True)
class Decision:
    """What to do next. `new_window`: zero the counters and restart the step clock at `now`;
    `restart_deadline`: restart the max_duration clock too (an operator gave the rollout more time)."""

    action: Action
    state: RolloutState
    reason: str
    gates: tuple[GateResult, ...] = ()
    new_window: bool = False
    restart_deadline: bool = False

    @property
    def phase(self) -> Phase:
        return self.state.phase

    @property
    def step_index(self) -> int:
        return self.state.step_index
