"""The pure decision core of automatic rollouts: phases, statistical gates and transitions.

`decide(snapshot, policy)` reads the summed counters of the current step window and returns a
`Decision`; operator commands go through `operator_action`. Nothing here does I/O or reads a clock,
so the loop, persistence and HTTP layers only apply what these functions return.

Why the statistics look the way they do:

* The loop re-evaluates every few seconds. A fixed-n interval checked that often crosses its bound
  by chance far more often than its nominal level, so every gate here is *anytime-valid*: each
  rests on a likelihood ratio that is a nonnegative martingale when the gate's null is true, and
  Ville's inequality bounds the chance that it *ever* exceeds 1/gamma by gamma, however often we
  look and wherever the loop stops (deadline, operator). All of them need only (n, k) style
  counters, which sum across router processes.
* agreement: Wald's SPRT of p = gate - d against p = gate + d (the indifference zone).
* error rate, accuracy: a beta-mixture confidence sequence per side (exact for Bernoulli counts,
  tight for rare errors), combined by a union bound, which stays valid however the two sides are
  correlated (shadowed steps see the same requests on both sides).
* latency: order-statistic bounds on each side's quantile, with the ranks taken from the same
  beta-mixture sequence for the count of samples below the true quantile.
* Error budget (`error_budget`): a false pass of a bad candidate is bounded by alpha = 1 - confidence
  at every step, since advancing needs *all* gates to pass. A false failure of a good candidate can
  come from any gate at any judged step, so beta is split across them; a whole rollout of a good
  candidate is then rolled back by chance at most 1 - confidence of the time.
"""

from __future__ import annotations

import enum
import math
from bisect import bisect_left
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from functools import lru_cache, reduce
from itertools import accumulate, pairwise

__all__ = [
    "EMPTY_HISTOGRAM", "LATENCY_BUCKETS_S", "Action", "Decision", "Gate", "GateResult", "Gates",
    "InvalidTransition", "LlmEvidence", "OperatorAction", "Phase", "RolloutPolicy", "RolloutState", "SideCounts",
    "Snapshot", "StepEvidence", "Verdict", "accuracy_gate", "agreement_gate", "decide",
    "error_budget", "error_rate_gate", "evaluate_gates", "initial_state", "is_timed_out",
    "latency_gate", "latency_histogram", "next_step", "operator_action", "should_advance",
]

# 16 bounds per octave from 1 ms to 60 s (255 bounds; DDSketch-like ~4% relative resolution). A
# bucket only brackets a quantile within its width, so a ratio of two p99s is known no better than
# about the bucket factor squared: the ~1.46 factor of 30 bounds could never show a ratio below 1.25,
# and 8 per octave needs ~2.5x the samples to pass at 1.25. Every 2nd, 4th, ... bound is the same
# float as in the 8, 4, ... per octave series, so an exporter can publish a coarser set by summing.
LATENCY_BUCKETS_S: tuple[float, ...] = tuple(float(f"{0.001 * 2 ** (i / 16):.5g}") for i in range(255))
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
    """An operator action that the current phase does not allow (HTTP 409)."""


# -- policy -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Gates:
    """Thresholds a step must meet; None switches a gate off (at least one must stay on)."""

    min_agreement: float | None = 0.99
    max_latency_ratio: float | None = 1.25
    max_error_rate_increase: float | None = 0.005
    min_accuracy_delta: float | None = None
    agreement_indifference: float = 0.005  # true agreement within this of the gate may go either way
    latency_quantile: float = 0.99
    # LLM gates (see llm_gates below): streamed time to first token and per output token, and the
    # judge's win rate of the candidate (ties count half).
    max_ttft_ratio: float | None = None
    max_tpot_ratio: float | None = None
    min_judge_win_rate: float | None = None
    llm_quantile: float = 0.9  # TTFT/TPOT quantile: p99 would need ~800 streamed samples per side

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
        if self.min_accuracy_delta is not None and not -1 < self.min_accuracy_delta < 1:
            problems.append("min_accuracy_delta must lie in (-1, 1)")
        if not 0.5 <= self.latency_quantile < 1:
            problems.append("latency_quantile must lie in [0.5, 1)")
        problems += _llm_gate_problems(self)
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def count(self) -> int:
        limits = (self.min_agreement, self.max_latency_ratio, self.max_error_rate_increase, self.min_accuracy_delta,
                  self.max_ttft_ratio, self.max_tpot_ratio, self.min_judge_win_rate)
        return sum(limit is not None for limit in limits)


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

    def __post_init__(self) -> None:
        _check_counts([(self.agreements, self.comparisons)])

    def __add__(self, other: StepEvidence) -> StepEvidence:
        return StepEvidence(self.comparisons + other.comparisons, self.agreements + other.agreements,
                            self.primary + other.primary, self.candidate + other.candidate)

    @staticmethod
    def merge(parts: Iterable[StepEvidence]) -> StepEvidence:
        return reduce(StepEvidence.__add__, parts, StepEvidence())


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
class GateResult:
    """One gate's verdict and the bounds it was read from.

    Lower-is-better gates (error rate, latency) pass when `high <= threshold` and fail when
    `low > threshold`; higher-is-better gates (agreement, accuracy) pass when `low >= threshold` and
    fail when `high < threshold`. None is an unbounded side (no information yet).
    """

    name: Gate
    verdict: Verdict
    estimate: float | None
    low: float | None
    high: float | None
    threshold: float
    n: int

    def __str__(self) -> str:
        def f(x: float | None) -> str:
            return "?" if x is None else f"{x:.4g}"
        return (f"{self.name} {self.verdict}: {f(self.estimate)} in [{f(self.low)}, {f(self.high)}] "
                f"vs {self.threshold:g} (n={self.n})")


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


# -- statistics ---------------------------------------------------------------------------------

# Jeffreys Beta(1/2, 1/2) as the mixing distribution: it puts more weight near 0 and 1 than a
# uniform one, where error rates and accuracies live, so the sequences are tighter there.
_PRIOR = 0.5
_LOG_BETA_PRIOR = math.log(math.pi)


def _log_mixture(k: float, n: float) -> float:
    """log of the beta-mixture marginal likelihood of k hits in n trials."""
    a, b = _PRIOR + k, _PRIOR + n - k
    return math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b) - _LOG_BETA_PRIOR


def _crossing(holds: Callable[[float], bool], lo: float, hi: float) -> float:
    """Where a predicate that holds up to some point in [lo, hi] stops holding (lo or hi at the ends)."""
    if not holds(lo):
        return lo
    if holds(hi):
        return hi
    for _ in range(45):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if holds(mid) else (lo, mid)
    return (lo + hi) / 2


def _rate_bounds(k: int, n: int, gamma: float) -> tuple[float, float]:
    """Confidence sequence for a Bernoulli rate: covers it at every n with probability >= 1 - gamma.

    The set of p whose mixture likelihood ratio is still below 1/gamma; the ratio is convex in p,
    so the set is an interval around k/n.
    """
    if n == 0:
        return 0.0, 1.0
    level, mix = -math.log(gamma), _log_mixture(k, n)

    def inside(p: float) -> bool:
        return mix - k * math.log(p) - (n - k) * math.log1p(-p) < level

    tiny = 1e-15
    hat = min(max(k / n, tiny), 1 - tiny)  # the ends themselves are log(0)
    low = 0.0 if k == 0 else _crossing(lambda p: not inside(p), tiny, hat)
    high = 1.0 if k == n else _crossing(inside, hat, 1 - tiny)
    return low, high


def _difference_bounds(kc: int, nc: int, kp: int, np_: int, gamma: float) -> tuple[float, float]:
    """Bounds on rate_c - rate_p valid at every n with probability >= 1 - 2*gamma (union bound)."""
    c_low, c_high = _rate_bounds(kc, nc, gamma)
    p_low, p_high = _rate_bounds(kp, np_, gamma)
    return c_low - p_high, c_high - p_low


@lru_cache(maxsize=8192)
def _rank_bounds(n: int, q: float, gamma: float) -> tuple[int, int]:
    """[lo, hi] holding, at every n with probability >= 1 - gamma, the count of samples below the
    true q-quantile: that count is Binomial(n, q), so this is the mixture sequence with p = q known."""
    level = -math.log(gamma)

    def inside(s: float) -> bool:
        return _log_mixture(s, n) - s * math.log(q) - (n - s) * math.log1p(-q) < level

    centre = min(n, round(n * q))
    if not inside(centre):
        return 0, n
    return _last_int(lambda s: not inside(s), 0, centre) + 1, _last_int(inside, centre, n)


def _last_int(holds: Callable[[int], bool], lo: int, hi: int) -> int:
    """The largest integer in [lo, hi] where a predicate true up to some point holds (lo - 1 if none)."""
    if not holds(lo):
        return lo - 1
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if holds(mid) else (lo, mid - 1)
    return lo


def _quantile_bounds(hist: tuple[int, ...], q: float, gamma: float) -> tuple[float | None, float | None]:
    """Bounds on one side's q-quantile from its histogram, valid at every n with prob >= 1 - gamma.

    At most `hi` samples lie below the true quantile, so the (hi+1)-th smallest is at or above it;
    at least `lo` lie below, so the lo-th smallest is below it. Each is known only to its bucket:
    we take the bucket's outer edge. Latencies under the first bound count as the first bound.
    """
    n = sum(hist)
    low_rank, high_rank = _rank_bounds(n, q, gamma)
    cum = list(accumulate(hist))
    low = LATENCY_BUCKETS_S[max(bisect_left(cum, low_rank) - 1, 0)] if low_rank >= 1 else None
    j = bisect_left(cum, high_rank + 1)
    high = LATENCY_BUCKETS_S[j] if high_rank < n and j < len(LATENCY_BUCKETS_S) else None
    return low, high


def _quantile_estimate(hist: tuple[int, ...], q: float) -> float | None:
    """The bucket holding the q-quantile, at its geometric middle (for display only)."""
    n = sum(hist)
    if n == 0:
        return None
    j = bisect_left(list(accumulate(hist)), max(1, math.ceil(n * q)))
    top = LATENCY_BUCKETS_S[min(j, len(LATENCY_BUCKETS_S) - 1)]
    return top if j in (0, len(LATENCY_BUCKETS_S)) else top / math.sqrt(BUCKET_FACTOR)


def _ratio(top: float | None, bottom: float | None) -> float | None:
    return None if top is None or bottom is None else top / bottom


def _sprt_llr(n: int, k: int, gate: float, delta: float) -> float:
    """log of the likelihood ratio of p = gate + delta against p = gate - delta after k of n agree."""
    p0, p1 = gate - delta, gate + delta
    return k * math.log(p1 / p0) + (n - k) * math.log((1 - p1) / (1 - p0))


# -- gates --------------------------------------------------------------------------------------


def _verdict(n: int, min_samples: int, passes: bool, fails: bool) -> Verdict:
    if n < min_samples:
        return Verdict.INCONCLUSIVE
    return Verdict.FAIL if fails else Verdict.PASS if passes else Verdict.INCONCLUSIVE


def agreement_gate(evidence: StepEvidence, policy: RolloutPolicy, threshold: float) -> GateResult:
    """Wald's SPRT of p1 = gate + d against p0 = gate - d, d = `agreement_indifference`.

    Pass when the log likelihood ratio reaches log(1/alpha), fail when it reaches log(beta), else
    inconclusive. The ratio depends on (n, k) alone, so summed counters suffice. Under p <= p0 the
    ratio is a supermartingale, so by Ville a candidate that bad passes with probability <= alpha
    however often we look; symmetrically a candidate with p >= p1 fails with probability <= beta.
    Inside the indifference zone (gate - d, gate + d) either answer is acceptable; it is what lets
    the test stop early (median ~900 comparisons at gate +-0.5 points, against ~2,300 for a fixed-n
    test with the same error rates; see bench/decisions.py). `low`/`high` invert the same test:
    every gate at or below `low` would pass on this evidence, every gate at or above `high` would fail.
    """
    n, k, d = evidence.comparisons, evidence.agreements, policy.gates.agreement_indifference
    alpha, beta = error_budget(policy)
    llr = _sprt_llr(n, k, threshold, d)
    edge_lo, edge_hi = d * 1.000001, 1 - d * 1.000001
    low = _crossing(lambda g: _sprt_llr(n, k, g, d) >= -math.log(alpha), edge_lo, edge_hi)
    high = _crossing(lambda g: _sprt_llr(n, k, g, d) > math.log(beta), edge_lo, edge_hi)
    verdict = _verdict(n, policy.min_samples, llr >= -math.log(alpha), llr <= math.log(beta))
    return GateResult(Gate.AGREEMENT, verdict, k / n if n else None, 0.0 if low == edge_lo else low,
                      1.0 if high == edge_hi else high, threshold, n)


def error_rate_gate(evidence: StepEvidence, policy: RolloutPolicy, threshold: float) -> GateResult:
    """Candidate error rate minus primary's against `max_error_rate_increase`.

    Each side's rate has a confidence sequence at alpha/2 (pass side) and beta/2 (fail side), so
    the difference of the outer bounds is anytime-valid at alpha and beta, however the sides
    correlate. Conservative next to a paired test, but needs only the per-side counters.
    """
    c, p = evidence.candidate, evidence.primary
    alpha, beta = error_budget(policy)
    high = _difference_bounds(c.errors, c.requests, p.errors, p.requests, alpha / 2)[1]
    low = _difference_bounds(c.errors, c.requests, p.errors, p.requests, beta / 2)[0]
    n = min(c.requests, p.requests)
    estimate = c.errors / c.requests - p.errors / p.requests if n else None
    verdict = _verdict(n, policy.min_samples, high <= threshold, low > threshold)
    return GateResult(Gate.ERROR_RATE, verdict, estimate, low, high, threshold, n)


def latency_gate(evidence: StepEvidence, policy: RolloutPolicy, threshold: float) -> GateResult:
    """Candidate quantile (p99) over primary's against `max_latency_ratio`.

    high = candidate's upper bound / primary's lower bound (each at alpha/2), low = candidate's
    lower / primary's upper (each at beta/2): pass when high <= gate, fail when low > gate.
    """
    q, c, p = policy.gates.latency_quantile, evidence.candidate.latency, evidence.primary.latency
    alpha, beta = error_budget(policy)
    high = _ratio(_quantile_bounds(c, q, alpha / 2)[1], _quantile_bounds(p, q, alpha / 2)[0])
    low = _ratio(_quantile_bounds(c, q, beta / 2)[0], _quantile_bounds(p, q, beta / 2)[1])
    n = min(sum(c), sum(p))
    passes, fails = high is not None and high <= threshold, low is not None and low > threshold
    estimate = _ratio(_quantile_estimate(c, q), _quantile_estimate(p, q))
    return GateResult(Gate.LATENCY, _verdict(n, policy.min_samples, passes, fails), estimate, low, high, threshold, n)


def accuracy_gate(evidence: StepEvidence, policy: RolloutPolicy, threshold: float) -> GateResult:
    """Candidate accuracy minus primary's, from user feedback, against `min_accuracy_delta`
    (the error-rate construction mirrored: higher is better)."""
    c, p = evidence.candidate, evidence.primary
    alpha, beta = error_budget(policy)
    low = _difference_bounds(c.correct, c.labelled, p.correct, p.labelled, alpha / 2)[0]
    high = _difference_bounds(c.correct, c.labelled, p.correct, p.labelled, beta / 2)[1]
    n = min(c.labelled, p.labelled)
    estimate = c.correct / c.labelled - p.correct / p.labelled if n else None
    verdict = _verdict(n, policy.min_samples, low >= threshold, high < threshold)
    return GateResult(Gate.ACCURACY, verdict, estimate, low, high, threshold, n)


def evaluate_gates(snapshot: Snapshot, policy: RolloutPolicy) -> tuple[GateResult, ...]:
    """The gates that apply to this step: agreement only where shadowed, accuracy only with feedback."""
    g, ev, results = policy.gates, snapshot.evidence, []
    if g.min_agreement is not None and snapshot.shadowed:
        results.append(agreement_gate(ev, policy, g.min_agreement))
    if g.max_error_rate_increase is not None:
        results.append(error_rate_gate(ev, policy, g.max_error_rate_increase))
    if g.max_latency_ratio is not None:
        results.append(latency_gate(ev, policy, g.max_latency_ratio))
    if g.min_accuracy_delta is not None and snapshot.feedback:
        results.append(accuracy_gate(ev, policy, g.min_accuracy_delta))
    results += llm_gates(snapshot.llm or LlmEvidence(), policy)
    return tuple(results)


# -- LLM gates: the machinery above over other histograms and counts -----------------------------


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


def _llm_gate_problems(g: Gates) -> list[str]:
    problems = [f"{name} must exceed {BUCKET_FACTOR**2:.3f}, the histogram's resolution"
                for name, v in (("max_ttft_ratio", g.max_ttft_ratio), ("max_tpot_ratio", g.max_tpot_ratio))
                if v is not None and v <= BUCKET_FACTOR**2]
    if g.min_judge_win_rate is not None and not 0 < g.min_judge_win_rate < 1:
        problems.append("min_judge_win_rate must lie in (0, 1)")
    if not 0.5 <= g.llm_quantile < 1:
        problems.append("llm_quantile must lie in [0.5, 1)")
    return problems


def _histogram_gate(gate: Gate, pair: tuple[tuple[int, ...], tuple[int, ...]], policy: RolloutPolicy,
                    threshold: float) -> GateResult:
    """The latency gate's quantile-ratio test (same anytime-valid bounds) over another pair of histograms."""
    sides = StepEvidence(primary=SideCounts(latency=pair[0]), candidate=SideCounts(latency=pair[1]))
    gates = replace(policy.gates, latency_quantile=policy.gates.llm_quantile)
    return replace(latency_gate(sides, replace(policy, gates=gates), threshold), name=gate)


def judge_gate(ev: LlmEvidence, policy: RolloutPolicy, threshold: float) -> GateResult:
    """The candidate's win rate (ties half) against `min_judge_win_rate`. Each verdict is an outcome
    in {0, 1/2, 1}; the beta-mixture likelihood ratio stays a supermartingale for outcomes in [0, 1]
    (it is convex in the outcome), so the accuracy gate's confidence sequence applies unchanged."""
    n = ev.wins + ev.ties + ev.losses
    score = ev.wins + ev.ties / 2
    alpha, beta = error_budget(policy)
    low = _rate_bounds(score, n, alpha)[0]  # type: ignore[arg-type]
    high = _rate_bounds(score, n, beta)[1]  # type: ignore[arg-type]
    verdict = _verdict(n, policy.min_samples, low >= threshold, high < threshold)
    return GateResult(Gate.JUDGE, verdict, score / n if n else None, low, high, threshold, n)


def llm_gates(ev: LlmEvidence, policy: RolloutPolicy) -> list[GateResult]:
    g, out = policy.gates, []
    if g.max_ttft_ratio is not None:
        out.append(_histogram_gate(Gate.TTFT, ev.ttft, policy, g.max_ttft_ratio))
    if g.max_tpot_ratio is not None:
        out.append(_histogram_gate(Gate.TPOT, ev.tpot, policy, g.max_tpot_ratio))
    if g.min_judge_win_rate is not None:
        out.append(judge_gate(ev, policy, g.min_judge_win_rate))
    return out


# -- transitions --------------------------------------------------------------------------------


def initial_state(policy: RolloutPolicy) -> RolloutState:
    return RolloutState(_phase_at(0, policy))


def _phase_at(step: int, policy: RolloutPolicy) -> Phase:
    return Phase.SHADOWING if policy.steps[step] == 0 else Phase.PROGRESSING


def _checked(state: RolloutState, policy: RolloutPolicy) -> RolloutState:
    """A state that fits the policy: a promoted rollout sits on the last step, no other one does."""
    on_last = state.step_index == policy.last_step
    if (state.phase is Phase.PROMOTED) != on_last or not 0 <= state.step_index <= policy.last_step:
        raise ValueError(f"{state.phase} at step {state.step_index} does not fit the steps {policy.steps}")
    return state


def _where(state: RolloutState, policy: RolloutPolicy) -> str:
    return f"step {state.step_index} ({policy.steps[state.step_index]:g}%)"


def _stay(state: RolloutState, action: Action, reason: str, gates: tuple[GateResult, ...] = ()) -> Decision:
    return Decision(action, state, reason, gates)


def _halt(action: Action, state: RolloutState, gates: tuple[GateResult, ...], why: str) -> Decision:
    phase = Phase.ROLLED_BACK if action is Action.ROLLBACK else Phase.PAUSED
    return Decision(action, RolloutState(phase, state.step_index, state.approved), f"{why}: {action}", gates)


def should_advance(snapshot: Snapshot, policy: RolloutPolicy, gates: tuple[GateResult, ...]) -> bool:
    """Every applicable gate passes (and at least one applies) and the interval has elapsed."""
    elapsed = snapshot.now - snapshot.step_started_at
    return bool(gates) and all(g.verdict is Verdict.PASS for g in gates) and elapsed >= policy.interval_s


def is_timed_out(snapshot: Snapshot, policy: RolloutPolicy) -> bool:
    return snapshot.now - snapshot.rollout_started_at >= policy.max_duration_s


def next_step(state: RolloutState, policy: RolloutPolicy, gates: tuple[GateResult, ...], why: str,
              approved: bool = False) -> Decision:
    """Move one step on: the step before the last waits for approval if the policy asks for it
    (unless given), and moving onto the last step is the promotion."""
    target = state.step_index + 1
    if target == policy.last_step and policy.approval and not (approved or state.approved):
        return Decision(Action.AWAIT_APPROVAL, RolloutState(Phase.AWAITING_APPROVAL, state.step_index),
                        f"{why}; waiting for an operator to approve step {target}", gates)
    if target == policy.last_step:
        return Decision(Action.PROMOTE, RolloutState(Phase.PROMOTED, target, state.approved or approved),
                        f"{why}; promoted", gates)
    return Decision(Action.ADVANCE, RolloutState(_phase_at(target, policy), target, state.approved),
                    f"{why}; advance to step {target} ({policy.steps[target]:g}%)", gates, new_window=True)


def _hold_reason(snapshot: Snapshot, policy: RolloutPolicy, gates: tuple[GateResult, ...]) -> str:
    where = _where(snapshot.state, policy)
    if not gates:
        return f"holding at {where}: no configured gate applies (no shadow, no traffic evidence)"
    open_gates = [str(g) for g in gates if g.verdict is not Verdict.PASS]
    if open_gates:
        return f"holding at {where}, collecting: " + "; ".join(open_gates)
    elapsed = snapshot.now - snapshot.step_started_at
    return f"holding at {where}: gates pass, {elapsed:.0f}s of the {policy.interval_s:g}s interval elapsed"


def decide(snapshot: Snapshot, policy: RolloutPolicy) -> Decision:
    """The next move for one route, from the evidence of the current step window.

    A failure acts at once (no need to wait out the interval to stop a bad candidate); advancing
    needs every gate to pass and the interval to have elapsed; otherwise hold until max_duration.
    While awaiting approval the gates keep running (Ville's bound covers looking on), but the
    deadline does not: the wait is the operator's, not the candidate's.
    """
    state = _checked(snapshot.state, policy)
    if state.phase in TERMINAL:
        return _stay(state, Action.NONE, f"{state.phase}: final; only an operator can act")
    if state.phase is Phase.PAUSED:
        return _stay(state, Action.HOLD, f"paused at {_where(state, policy)}: resume, restart or roll back")
    gates = evaluate_gates(snapshot, policy)
    failed = [str(g) for g in gates if g.verdict is Verdict.FAIL]
    if failed:
        return _halt(policy.on_failure, state, gates, f"failed at {_where(state, policy)}: " + "; ".join(failed))
    if state.phase is Phase.AWAITING_APPROVAL:
        if state.approved:
            return next_step(state, policy, gates, "approved by an operator")
        return _stay(state, Action.HOLD, f"awaiting approval at {_where(state, policy)}", gates)
    if should_advance(snapshot, policy, gates):
        return next_step(state, policy, gates, f"all gates pass at {_where(state, policy)}")
    if is_timed_out(snapshot, policy):
        why = f"no decision within max_duration {policy.max_duration_s:g}s; {_hold_reason(snapshot, policy, gates)}"
        return _halt(policy.on_timeout, state, gates, why)
    return _stay(state, Action.HOLD, _hold_reason(snapshot, policy, gates), gates)


def operator_action(state: RolloutState, action: OperatorAction, policy: RolloutPolicy) -> Decision:
    """Apply an operator command; InvalidTransition when the phase does not allow it."""
    phase, live = _checked(state, policy).phase, state.phase in {Phase.SHADOWING, Phase.PROGRESSING}
    if action in (OperatorAction.PROMOTE, OperatorAction.APPROVE) and phase is Phase.AWAITING_APPROVAL:
        return next_step(state, policy, (), "approved by an operator", approved=True)
    if action is OperatorAction.PROMOTE and live:
        return next_step(state, policy, (), f"operator skipped the analysis at {_where(state, policy)}", approved=True)
    if action is OperatorAction.APPROVE and (live or phase is Phase.PAUSED):
        return Decision(Action.NONE, RolloutState(phase, state.step_index, True), "last step approved in advance")
    if action is OperatorAction.ROLLBACK and phase not in TERMINAL:
        return _halt(Action.ROLLBACK, state, (), "rolled back by an operator")
    if action is OperatorAction.PAUSE and (live or phase is Phase.AWAITING_APPROVAL):
        return _halt(Action.PAUSE, state, (), "paused by an operator")
    if action is OperatorAction.RESUME and phase is Phase.PAUSED:
        resumed = RolloutState(_phase_at(state.step_index, policy), state.step_index, state.approved)
        return Decision(Action.RESUME, resumed, f"resumed at {_where(state, policy)} with fresh evidence",
                        new_window=True, restart_deadline=True)
    if action is OperatorAction.RESTART and phase in (Phase.PAUSED, Phase.ROLLED_BACK):
        return Decision(Action.RESTART, initial_state(policy), "restarted from the first step",
                        new_window=True, restart_deadline=True)
    raise InvalidTransition(f"cannot {action} a rollout that is {phase}")
