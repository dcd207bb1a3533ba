"""How much more traffic the current step needs before its gates reach a verdict: pure, for the
status page ("at this rate, a verdict is expected in about N minutes").

The estimate takes the step's current estimates as the truth. For the sequential probability ratio
tests (agreement, error rate, accuracy) the log likelihood ratio then moves like a Brownian motion
with a drift and a variance per sample, and Wald's approximation gives the expected time for it to
leave the band between its two thresholds (`sequential.brownian_time`): a candidate right at the gate
still reaches a verdict, by chance, and the estimate says how soon. For the latency gate the
histograms are scaled up with their shape kept until the gate gives a verdict (a Brownian motion
for its SPRT estimated the remaining traffic less well in bench/decisions.py's check).
Both are expectations of a random time: a step can take half or twice as long.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass

from router.analysis.boundaries import fail_level
from router.analysis.gates import (
    counts_llr,
    difference_sprt,
    evaluate_gates,
    latency_gate,
    sprt_counts,
    sprt_information,
)
from router.analysis.rollout_types import Gate, RolloutPolicy, SideCounts, Snapshot, StepEvidence, Verdict, error_budget
from router.analysis.sequential import brownian_time, point_llr
from router.analysis.stochastic import stochastic_claims

__all__ = ["GateExpectation", "expected_samples", "expected_seconds", "gate_expectations"]

_LATENCY_SCALE_CAP = 1_000.0  # beyond a thousand times the current traffic we call it "not expected"


@dataclass(frozen=True, slots=True)
class GateExpectation:
    """Further samples (per side, in the gate's own n: comparisons, requests, pairs or labels)
    before this gate is expected to decide, math.inf when no verdict is in sight, 0 when it has one
    already; and the seconds that takes at the rate this step has collected them so far (None
    before any have arrived)."""

    gate: Gate
    samples: float
    seconds: float | None = None


def gate_expectations(snapshot: Snapshot, policy: RolloutPolicy) -> tuple[GateExpectation, ...]:
    """One expectation per gate that applies to this step, in `evaluate_gates` order."""
    out = []
    elapsed = snapshot.now - snapshot.step_started_at
    for result in evaluate_gates(snapshot, policy):
        if result.verdict is not Verdict.INCONCLUSIVE:
            out.append(GateExpectation(result.name, 0.0, 0.0))
            continue
        remaining = _REMAINING[result.name](snapshot.evidence, policy, result.threshold)
        floor = max(policy.min_samples - result.n, 0)  # no verdict before min_samples, whatever the evidence
        samples = max(remaining, float(floor))
        seconds = samples * elapsed / result.n if result.n and elapsed > 0 else None
        out.append(GateExpectation(result.name, samples, seconds))
    return tuple(out)


def expected_samples(snapshot: Snapshot, policy: RolloutPolicy) -> float | None:
    """Further samples per side before every applicable gate is expected to have a verdict (what
    advancing needs); None when no gate applies; math.inf when a gate sees no verdict coming."""
    expectations = gate_expectations(snapshot, policy)
    return max(e.samples for e in expectations) if expectations else None


def expected_seconds(snapshot: Snapshot, policy: RolloutPolicy, samples_per_s: float | None = None) -> float | None:
    """Seconds until every applicable gate is expected to have a verdict, and no less than the time
    left in the step's `interval`; what the status page shows as "a verdict is expected in about N
    minutes". Each gate's samples arrive at the rate this step has seen so far (comparisons, requests
    and labels each at their own), or at `samples_per_s` per side when given (planning: the
    smaller side's rate, a canary's share of requests or the mirrored requests of a shadowed step).
    None without an applicable gate, or before any traffic says how fast samples come.
    """
    expectations = gate_expectations(snapshot, policy)
    if not expectations:
        return None
    if samples_per_s is not None:
        if samples_per_s <= 0:
            return None
        times = [e.samples / samples_per_s for e in expectations]
    else:
        if any(e.seconds is None for e in expectations):
            return None
        times = [e.seconds for e in expectations if e.seconds is not None]
    interval_left = max(policy.interval_s - (snapshot.now - snapshot.step_started_at), 0.0)
    return max(max(times), interval_left)


# -- the SPRT gates ------------------------------------------------------------------------------


def _sprt_remaining(llr: float, n: int, variance_n: float, policy: RolloutPolicy, fail_at: float) -> float:
    """Brownian motion from the current ratio: drift llr / n and variance variance_n / n per sample,
    between the pass level log(1/alpha) and `fail_at`, the level the test fails at now."""
    if n == 0:
        return math.inf
    alpha = error_budget(policy)[0]
    return brownian_time(llr, -math.log(alpha), fail_at, llr / n, variance_n / n)


def _slope(f: Callable[[int], float], k: int, n: int) -> float:
    """How much one more hit (instead of a miss) moves the ratio (a finite difference on the counts)."""
    return f(k + 1) - f(k) if k < n else f(k) - f(k - 1)


def _agreement(ev: StepEvidence, policy: RolloutPolicy, threshold: float) -> float:
    n, k, d = ev.comparisons, ev.agreements, policy.gates.agreement_indifference

    def llr(hits: int) -> float:
        return point_llr(hits, n, threshold + d, threshold - d)

    p = k / n if n else 0.0
    variance = n * p * (1 - p) * _slope(llr, k, n) ** 2
    return _sprt_remaining(llr(k), n, variance, policy, math.log(error_budget(policy)[1]))


def _difference(gate: Gate) -> Callable[[StepEvidence, RolloutPolicy, float], float]:
    """The error-rate or accuracy SPRT from the counts it reads (paired or not, as the gate chose),
    between its pass level and the fail level it uses now (`boundaries.fail_level`, which moves
    with the information gathered: the estimate is Wald's for the boundary in force)."""

    def remaining(ev: StepEvidence, policy: RolloutPolicy, threshold: float) -> float:
        g = policy.gates
        sign, d = (1.0, g.error_margin) if gate is Gate.ERROR_RATE else (-1.0, g.accuracy_margin)
        good, bad = threshold - sign * d, threshold + sign * d
        test = difference_sprt(ev, policy, gate, threshold)
        paired, counts, after = sprt_counts(ev, gate)

        def llr(*x: int) -> float:
            return counts_llr(paired, x, good, bad)

        if paired:  # b one-sided discordant pairs one way, c the other, of n: a trinomial
            b, c, n = counts
            if n == 0:
                return math.inf
            gb, gc = _slope(lambda x: llr(x, c, n), b, n - c), _slope(lambda y: llr(b, y, n), c, n - b)
            pb, pc = b / n, c / n
            variance = n * (pb * (1 - pb) * gb ** 2 + pc * (1 - pc) * gc ** 2 - 2 * pb * pc * gb * gc)
        else:  # two independent binomials
            kc, nc, kp, np_ = counts
            n = min(nc, np_)
            if n == 0:
                return math.inf
            gc, gp = _slope(lambda a: llr(a, nc, kp, np_), kc, nc), _slope(lambda a: llr(kc, nc, a, np_), kp, np_)
            pc, pp = kc / nc, kp / np_
            variance = nc * pc * (1 - pc) * gc ** 2 + np_ * pp * (1 - pp) * gp ** 2
        samples = _sprt_remaining(test.llr, n, variance, policy, test.fail_level)
        if 0 < samples < math.inf:
            # The fail level drops once enough information is in (`boundaries.fail_level`): when the
            # crossing expected at today's level lies past that switch, the later level applies.
            jump = test.llr - llr(*after)
            info = sprt_information(paired, counts, abs(bad - good))
            later = fail_level(error_budget(policy)[1], info * (n + samples) / n, jump)
            if later != test.fail_level:
                samples = _sprt_remaining(test.llr, n, variance, policy, later)
        return samples

    return remaining


# -- the latency gate ----------------------------------------------------------------------------


def _scaled(side: SideCounts, factor: float) -> SideCounts:
    latency = tuple(round(x * factor) for x in side.latency)
    return dataclasses.replace(side, requests=sum(latency), errors=0, latency=latency, labelled=0, correct=0)


def _latency(ev: StepEvidence, policy: RolloutPolicy, threshold: float) -> float:
    if policy.gates.latency_test == "stochastic":
        return _stochastic(ev, policy)
    n = min(sum(ev.candidate.latency), sum(ev.primary.latency))
    if n == 0:
        return math.inf

    def decided(factor: float) -> bool:
        scaled = StepEvidence(primary=_scaled(ev.primary, factor), candidate=_scaled(ev.candidate, factor))
        return latency_gate(scaled, policy, threshold).verdict is not Verdict.INCONCLUSIVE

    return _grow_until(decided, n)


def _stochastic(ev: StepEvidence, policy: RolloutPolicy) -> float:
    """The comparisons scaled up with their shares kept until the stochastic-order test decides."""
    n = ev.order_pairs
    if n == 0:
        return math.inf
    alpha, beta = error_budget(policy)

    def decided(factor: float) -> bool:
        m = round(n * factor)
        return any(stochastic_claims(m, round(ev.order_worse_pass * factor), round(ev.order_worse_fail * factor),
                                     alpha, beta))

    return _grow_until(decided, n)


def _grow_until(decided: Callable[[float], bool], n: int) -> float:
    """Further samples until `decided` holds for the evidence scaled by a factor (math.inf past the cap)."""
    low, high = 1.0, 2.0
    while not decided(high):
        if high >= _LATENCY_SCALE_CAP:
            return math.inf
        low, high = high, high * 2
    while high - low > 0.02 * low:
        mid = (low + high) / 2
        low, high = (low, mid) if decided(mid) else (mid, high)
    return n * (high - 1)


_REMAINING: dict[Gate, Callable[[StepEvidence, RolloutPolicy, float], float]] = {
    Gate.AGREEMENT: _agreement, Gate.ERROR_RATE: _difference(Gate.ERROR_RATE),
    Gate.ACCURACY: _difference(Gate.ACCURACY), Gate.LATENCY: _latency,
}
