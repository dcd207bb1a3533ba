"""The pure decision core of automatic rollouts: phases, statistical gates and transitions.

`decide(snapshot, policy)` reads the summed counters of the current step window and returns a
`Decision`; operator commands go through `operator_action`. Nothing here does I/O or reads a clock,
so the loop, persistence and HTTP layers only apply what these functions return.

Why the statistics look the way they do:

* The loop re-evaluates every few seconds. A fixed-n interval checked that often crosses its bound
  by chance far more often than its nominal level, so every gate here is a sequential test: each
  rests on a likelihood ratio that is a nonnegative martingale (or close to one) when the gate's
  null is true, and Ville's inequality bounds the chance that it *ever* exceeds 1/gamma by gamma,
  however often we look and wherever the loop stops (deadline, operator). All of them need only
  (n, k) style counters, which sum across router processes.
* Every gate has an indifference zone around its threshold: a candidate at the bad edge passes
  with probability <= alpha, one at the good edge fails with probability <= beta, and in between
  either may happen. Demanding certainty right at the threshold is what made tests slow.
* agreement: Wald's SPRT of p = gate - d against p = gate + d.
* error rate, accuracy: the SPRT of the difference at gate -+ d, the primary's rate profiled out
  (approximate; measured in bench/decisions.py); on shadowed steps, on the discordant pairs only.
* latency: order-statistic confidence sequences on each side's quantile (one-sided mixtures for
  the count of samples below the true quantile), judged against gate x f and gate / f.
* Every GateResult carries, beside the test's boundaries, a confidence sequence for the value.
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
from dataclasses import dataclass, field
from functools import reduce
from itertools import accumulate, pairwise

from router.sequential import crossing, difference_llr, paired_llr, point_llr, rank_bounds, rate_bounds

__all__ = [
    "EMPTY_HISTOGRAM", "LATENCY_BUCKETS_S", "Action", "Decision", "Gate", "GateResult", "Gates",
    "InvalidTransition", "OperatorAction", "Phase", "RolloutPolicy", "RolloutState", "SideCounts",
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


class InvalidTransition(ValueError):
    """An operator action that the current phase does not allow (HTTP 409)."""


# -- policy -------------------------------------------------------------------------------------


_ZERO_GATE_MARGIN = 0.005


def _margin(given: float | None, gate: float | None) -> float:
    if given is not None:
        return given
    return abs(gate) if gate else _ZERO_GATE_MARGIN


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
    # candidate no worse than the primary passes and one twice the allowance worse fails (or
    # _ZERO_GATE_MARGIN when the gate is 0).
    error_indifference: float | None = None
    accuracy_indifference: float | None = None
    latency_indifference: float = 1.25  # a factor: a ratio within gate / f .. gate x f may go either way

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
        limits = (self.min_agreement, self.max_latency_ratio, self.max_error_rate_increase, self.min_accuracy_delta)
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
    pairs: int = 0  # mirrored requests both sides answered (shadowed steps) ...
    discordant_candidate: int = 0  # ... where only the candidate erred
    discordant_primary: int = 0  # ... where only the primary erred

    def __post_init__(self) -> None:
        _check_counts([(self.agreements, self.comparisons),
                       (self.discordant_candidate + self.discordant_primary, self.pairs)])

    def __add__(self, other: StepEvidence) -> StepEvidence:
        return StepEvidence(self.comparisons + other.comparisons, self.agreements + other.agreements,
                            self.primary + other.primary, self.candidate + other.candidate,
                            self.pairs + other.pairs, self.discordant_candidate + other.discordant_candidate,
                            self.discordant_primary + other.discordant_primary)

    @property
    def paired(self) -> bool:
        """Every request on both sides is a counted pair, so the paired error test applies.
        (A window saved before pairs were counted, or a live canary step, is judged unpaired.)"""
        return 0 < self.pairs == self.candidate.requests == self.primary.requests

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
    paired: bool = False  # the error test read discordant pairs (a shadowed step)

    def __str__(self) -> str:
        def f(x: float | None) -> str:
            return "?" if x is None else f"{x:.4g}"
        ci = "" if self.confidence is None else \
            f"; {self.confidence:.4g} confidence interval [{f(self.ci_low)}, {f(self.ci_high)}]"
        paired = ", paired" if self.paired else ""
        return (f"{self.name} {self.verdict}: {f(self.estimate)} vs {self.threshold:g} (n={self.n}{paired}{ci}; "
                f"test boundaries [{f(self.low)}, {f(self.high)}])")

    def to_json(self) -> dict[str, object]:
        """The decision log's record of this gate (test boundaries and the interval named apart)."""
        return {"gate": str(self.name), "verdict": str(self.verdict), "estimate": self.estimate,
                "low": self.low, "high": self.high, "bounds": "sequential test boundaries",
                "ci_low": self.ci_low, "ci_high": self.ci_high, "ci_confidence": self.confidence,
                "zone": list(self.zone) if self.zone else None, "paired": self.paired,
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


# -- statistics ---------------------------------------------------------------------------------


def _quantile_bounds(hist: tuple[int, ...], q: float, gamma: float) -> tuple[float | None, float | None]:
    """Bounds on one side's q-quantile from its histogram, each valid at every n with prob >= 1 - gamma.

    At most `hi` samples lie below the true quantile, so the (hi+1)-th smallest is at or above it;
    at least `lo` lie below, so the lo-th smallest is below it. Each is known only to its bucket:
    we take the bucket's outer edge. Latencies under the first bound count as the first bound.
    """
    n = sum(hist)
    low_rank, high_rank = rank_bounds(n, q, gamma)
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
    return point_llr(k, n, gate + delta, gate - delta)


def _difference_bounds(kc: int, nc: int, kp: int, np_: int, gamma: float) -> tuple[float, float]:
    """Bounds on rate_c - rate_p valid at every n with probability >= 1 - 2*gamma (union bound)."""
    c_low, c_high = rate_bounds(kc, nc, gamma)
    p_low, p_high = rate_bounds(kp, np_, gamma)
    return c_low - p_high, c_high - p_low


def _solve(f: Callable[[float], float], target: float, lo: float, hi: float) -> float:
    """Where an increasing f crosses target in [lo, hi] (the ends when it does not): Illinois
    regula falsi, which needs a handful of evaluations for the smooth ratios here."""
    f_lo, f_hi = f(lo) - target, f(hi) - target
    if f_lo >= 0 or f_hi <= 0:
        return lo if f_lo >= 0 else hi
    side = 0
    for _ in range(60):
        x = hi - f_hi * (hi - lo) / (f_hi - f_lo)
        fx = f(x) - target
        if abs(fx) < 1e-9 or hi - lo < 1e-12:
            return x
        if fx > 0:
            hi, f_hi = x, fx
            f_lo = f_lo / 2 if side == -1 else f_lo
            side = -1
        else:
            lo, f_lo = x, fx
            f_hi = f_hi / 2 if side == 1 else f_hi
            side = 1
    return (lo + hi) / 2


@dataclass(frozen=True, slots=True)
class _Sprt:
    """A two-rate SPRT's result: its log likelihood ratio, the gate values at which it would pass
    and fail (the inverted test), and whether it used the pairing."""

    llr: float
    pass_at: float
    fail_at: float
    paired: bool


def _difference_sprt(evidence: StepEvidence, policy: RolloutPolicy, gate: Gate, threshold: float) -> _Sprt:
    """The SPRT of candidate-minus-primary at `threshold` -+ the indifference, oriented so that a
    positive ratio favours the candidate (lower rates are better for errors, higher for accuracy)."""
    c, p, g = evidence.candidate, evidence.primary, policy.gates
    alpha, beta = error_budget(policy)
    sign, d = (1.0, g.error_margin) if gate is Gate.ERROR_RATE else (-1.0, g.accuracy_margin)
    paired = gate is Gate.ERROR_RATE and evidence.paired
    if paired:
        counts = (evidence.discordant_candidate, evidence.discordant_primary, evidence.pairs)

        def llr(t: float) -> float:
            return paired_llr(*counts, t - sign * d, t + sign * d)
    else:
        two = (c.errors, c.requests, p.errors, p.requests) if sign > 0 else (c.correct, c.labelled, p.correct,
                                                                                p.labelled)

        def llr(t: float) -> float:
            return difference_llr(*two, t - sign * d, t + sign * d)
    # The ratio rises with the gate for errors (a higher allowance favours the candidate) and falls
    # with it for accuracy; each test boundary is where it meets Wald's threshold.
    lo, hi = -1 + d * 1.000001, 1 - d * 1.000001

    def oriented(u: float) -> float:  # increasing in u for both orientations
        return llr(sign * u)

    ends = sorted((sign * lo, sign * hi))
    pass_at = sign * _solve(oriented, -math.log(alpha), *ends)
    fail_at = sign * _solve(oriented, math.log(beta), *ends)
    return _Sprt(llr(threshold), pass_at, fail_at, paired)


# -- gates --------------------------------------------------------------------------------------


def _verdict(n: int, min_samples: int, passes: bool, fails: bool) -> Verdict:
    if n < min_samples:
        return Verdict.INCONCLUSIVE
    return Verdict.FAIL if fails else Verdict.PASS if passes else Verdict.INCONCLUSIVE


def _ci_level(policy: RolloutPolicy) -> float:
    return 1 - policy.confidence


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
    low = crossing(lambda g: _sprt_llr(n, k, g, d) >= -math.log(alpha), edge_lo, edge_hi)
    high = crossing(lambda g: _sprt_llr(n, k, g, d) > math.log(beta), edge_lo, edge_hi)
    verdict = _verdict(n, policy.min_samples, llr >= -math.log(alpha), llr <= math.log(beta))
    ci = rate_bounds(k, n, _ci_level(policy))
    return GateResult(Gate.AGREEMENT, verdict, k / n if n else None, 0.0 if low == edge_lo else low,
                      1.0 if high == edge_hi else high, threshold, n, ci[0], ci[1], policy.confidence,
                      (threshold - d, threshold + d))


def error_rate_gate(evidence: StepEvidence, policy: RolloutPolicy, threshold: float) -> GateResult:
    """Candidate error rate minus primary's against `max_error_rate_increase`, by an SPRT of the
    difference at gate - d (good) against gate + d (bad), d = `error_indifference`.

    Pass when the log likelihood ratio reaches log(1/alpha), fail when it reaches log(beta): a
    candidate d or more above the gate passes with probability about alpha, one d or more below
    it fails with probability about beta (see `router.sequential`). On shadowed steps both sides
    answered the same requests, and the test reads only the discordant pairs (McNemar); otherwise
    the two sides are independent samples. `low`/`high` invert the test (fail at every gate below
    `low`, pass at every gate above `high`); `ci_low`/`ci_high` is a confidence sequence.
    """
    c, p = evidence.candidate, evidence.primary
    alpha, beta = error_budget(policy)
    t = _difference_sprt(evidence, policy, Gate.ERROR_RATE, threshold)
    if t.paired:
        n, gamma = evidence.pairs, _ci_level(policy) / 2
        b_ci, c_ci = rate_bounds(evidence.discordant_candidate, n, gamma), rate_bounds(evidence.discordant_primary,
                                                                                       n, gamma)
        ci = (b_ci[0] - c_ci[1], b_ci[1] - c_ci[0])
    else:
        n = min(c.requests, p.requests)
        ci = _difference_bounds(c.errors, c.requests, p.errors, p.requests, _ci_level(policy) / 2)
    estimate = c.errors / c.requests - p.errors / p.requests if min(c.requests, p.requests) else None
    verdict = _verdict(n, policy.min_samples, t.llr >= -math.log(alpha), t.llr <= math.log(beta))
    d = policy.gates.error_margin
    return GateResult(Gate.ERROR_RATE, verdict, estimate, t.fail_at, t.pass_at, threshold, n, ci[0], ci[1],
                      policy.confidence, (threshold - d, threshold + d), t.paired)


def latency_gate(evidence: StepEvidence, policy: RolloutPolicy, threshold: float) -> GateResult:
    """Candidate quantile (p99) over primary's against `max_latency_ratio`, with an indifference
    factor f = `latency_indifference`: a candidate at gate x f or slower passes with probability
    <= alpha, one at gate / f or faster fails with probability <= beta, in between either may happen.

    Each side's quantile has a confidence sequence from its rank count (`_quantile_bounds`); the
    test passes when candidate upper / primary lower (each at alpha/2) is at most gate x f, and
    fails when candidate lower / primary upper (each at beta/2) exceeds gate / f. When both hold
    the truth is inside the zone, and the estimate's side of the gate decides. `high` and `low`
    are those bounds moved into the gate's frame (the gates at which the test would pass or fail).
    """
    g = policy.gates
    q, f, c, p = g.latency_quantile, g.latency_indifference, evidence.candidate.latency, evidence.primary.latency
    alpha, beta = error_budget(policy)
    high = _ratio(_quantile_bounds(c, q, alpha / 2)[1], _quantile_bounds(p, q, alpha / 2)[0])
    low = _ratio(_quantile_bounds(c, q, beta / 2)[0], _quantile_bounds(p, q, beta / 2)[1])
    n = min(sum(c), sum(p))
    estimate = _ratio(_quantile_estimate(c, q), _quantile_estimate(p, q))
    passes, fails = high is not None and high <= threshold * f, low is not None and low > threshold / f
    if passes and fails:  # both tests reject: inside the zone, where the estimate decides
        fails = estimate is not None and estimate > threshold
        passes = not fails
    gamma = _ci_level(policy) / 4  # four one-sided ends, two per side
    ci = (_ratio(_quantile_bounds(c, q, gamma)[0], _quantile_bounds(p, q, gamma)[1]),
          _ratio(_quantile_bounds(c, q, gamma)[1], _quantile_bounds(p, q, gamma)[0]))
    return GateResult(Gate.LATENCY, _verdict(n, policy.min_samples, passes, fails), estimate,
                      None if low is None else low * f, None if high is None else high / f, threshold, n,
                      ci[0], ci[1], policy.confidence, (threshold / f, threshold * f))


def accuracy_gate(evidence: StepEvidence, policy: RolloutPolicy, threshold: float) -> GateResult:
    """Candidate accuracy minus primary's, from user feedback, against `min_accuracy_delta`: the
    error-rate SPRT mirrored (higher is better), d = `accuracy_indifference`, unpaired (feedback
    scores each side's predictions separately). `low`: every gate at or below it would pass;
    `high`: every gate above it would fail."""
    c, p = evidence.candidate, evidence.primary
    alpha, beta = error_budget(policy)
    t = _difference_sprt(evidence, policy, Gate.ACCURACY, threshold)
    n = min(c.labelled, p.labelled)
    estimate = c.correct / c.labelled - p.correct / p.labelled if n else None
    verdict = _verdict(n, policy.min_samples, t.llr >= -math.log(alpha), t.llr <= math.log(beta))
    ci = _difference_bounds(c.correct, c.labelled, p.correct, p.labelled, _ci_level(policy) / 2)
    d = policy.gates.accuracy_margin
    return GateResult(Gate.ACCURACY, verdict, estimate, t.pass_at, t.fail_at, threshold, n, ci[0], ci[1],
                      policy.confidence, (threshold - d, threshold + d))


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
    return tuple(results)


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
