"""The rollout gates: each reads the step's summed counters and returns a `GateResult`.

Why the statistics look the way they do (the numbers themselves are in `router.analysis.sequential`):

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
  (approximate; measured in bench/decisions.py); on shadowed steps, on the discordant pairs only
  (accuracy: when feedback scored both predictions of each request). The fail boundary spends the
  whole beta (`router.analysis.boundaries`).
* latency: the SPRT of the log quantile ratio at gate / f against gate x f, standard errors read
  from the order statistics (a normal approximation, measured in bench/decisions.py for several
  latency shapes; `router.analysis.quantile_sprt`); on shadowed steps beside a paired exceedance
  test (`router.analysis.paired_latency`), each at half the budget. Opt-in: a test of stochastic
  order instead (`router.analysis.stochastic`).
* Every GateResult carries, beside the test's boundaries, a confidence sequence for the value.
* Error budget (`error_budget`): a false pass of a bad candidate is bounded by alpha = 1 - confidence
  at every step, since advancing needs *all* gates to pass. A false failure of a good candidate can
  come from any gate at any judged step, so beta is split across them; a whole rollout of a good
  candidate is then rolled back by chance at most 1 - confidence of the time.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Callable
from dataclasses import dataclass, replace
from itertools import accumulate

from router.analysis.boundaries import fail_level, information_paired, information_unpaired
from router.analysis.paired_latency import paired_claims
from router.analysis.quantile_sprt import quantile_sprt
from router.analysis.rollout_types import (
    BUCKET_FACTOR,
    LATENCY_BUCKETS_S,
    Gate,
    GateResult,
    LlmEvidence,
    PairedLatency,
    RolloutPolicy,
    SideCounts,
    Snapshot,
    StepEvidence,
    Verdict,
    error_budget,
)
from router.analysis.sequential import crossing, difference_llr, paired_llr, point_llr, rank_bounds, rate_bounds
from router.analysis.stochastic import stochastic_latency_gate

__all__ = [
    "Sprt",
    "accuracy_gate",
    "agreement_gate",
    "counts_llr",
    "difference_sprt",
    "error_rate_gate",
    "evaluate_gates",
    "latency_gate",
    "sprt_counts",
    "sprt_information",
]


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
class Sprt:
    """A two-rate SPRT's result: its log likelihood ratio, the level at or below which it fails
    now (`router.analysis.boundaries`), the gate values at which it would pass and fail (the
    inverted test), and whether it used the pairing."""

    llr: float
    fail_level: float
    pass_at: float
    fail_at: float
    paired: bool


def sprt_counts(evidence: StepEvidence, gate: Gate) -> tuple[bool, tuple[int, ...], tuple[int, ...]]:
    """(paired, the counts the test reads, the same after one more candidate failure)."""
    c, p = evidence.candidate, evidence.primary
    if gate is Gate.ERROR_RATE and evidence.paired:
        b, d, n = evidence.discordant_candidate, evidence.discordant_primary, evidence.pairs
        return True, (b, d, n), (b + 1, d, n + 1)
    if gate is Gate.ACCURACY and evidence.feedback_paired:
        b, d, n = evidence.only_candidate_right, evidence.only_primary_right, evidence.labelled_pairs
        return True, (b, d, n), (b, d + 1, n + 1)
    if gate is Gate.ERROR_RATE:
        return False, (c.errors, c.requests, p.errors, p.requests), (c.errors + 1, c.requests + 1, p.errors,
                                                                     p.requests)
    return False, (c.correct, c.labelled, p.correct, p.labelled), (c.correct, c.labelled + 1, p.correct, p.labelled)


def counts_llr(paired: bool, counts: tuple[int, ...], good: float, bad: float) -> float:
    if paired:
        return paired_llr(counts[0], counts[1], counts[2], good, bad)
    return difference_llr(counts[0], counts[1], counts[2], counts[3], good, bad)


def sprt_information(paired: bool, counts: tuple[int, ...], width: float) -> float:
    if paired:
        return information_paired(counts[0], counts[1], counts[2], width)
    return information_unpaired(counts[0], counts[1], counts[2], counts[3], width)


def sprt_verdict(paired: bool, counts: tuple[int, ...], after_failure: tuple[int, ...], good: float, bad: float,
                 alpha: float, beta: float) -> tuple[float, float]:
    """(log likelihood ratio of good against bad, the fail level now): the test passes at a ratio
    >= log(1/alpha) and fails at one <= the level (`boundaries.fail_level`)."""
    llr = counts_llr(paired, counts, good, bad)
    jump = llr - counts_llr(paired, after_failure, good, bad)
    return llr, fail_level(beta, sprt_information(paired, counts, abs(bad - good)), jump)


def difference_sprt(evidence: StepEvidence, policy: RolloutPolicy, gate: Gate, threshold: float) -> Sprt:
    """The SPRT of candidate-minus-primary at `threshold` -+ the indifference, oriented so that a
    positive ratio favours the candidate (lower rates are better for errors, higher for accuracy)."""
    g = policy.gates
    alpha, beta = error_budget(policy)
    sign, d = (1.0, g.error_margin) if gate is Gate.ERROR_RATE else (-1.0, g.accuracy_margin)
    paired, counts, after = sprt_counts(evidence, gate)
    llr, level = sprt_verdict(paired, counts, after, threshold - sign * d, threshold + sign * d, alpha, beta)

    def oriented(u: float) -> float:  # increasing in u for both orientations
        return counts_llr(paired, counts, sign * u - sign * d, sign * u + sign * d)

    # The ratio rises with the gate for errors (a higher allowance favours the candidate) and falls
    # with it for accuracy; each test boundary is where it meets its threshold.
    lo, hi = -1 + d * 1.000001, 1 - d * 1.000001
    ends = sorted((sign * lo, sign * hi))
    pass_at = sign * _solve(oriented, -math.log(alpha), *ends)
    fail_at = sign * _solve(oriented, level, *ends)
    return Sprt(llr, level, pass_at, fail_at, paired)


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
    it fails with probability about beta (see `router.analysis.sequential`). On shadowed steps both sides
    answered the same requests, and the test reads only the discordant pairs (McNemar); otherwise
    the two sides are independent samples. `low`/`high` invert the test (fail at every gate below
    `low`, pass at every gate above `high`); `ci_low`/`ci_high` is a confidence sequence.
    """
    c, p = evidence.candidate, evidence.primary
    alpha = error_budget(policy)[0]
    t = difference_sprt(evidence, policy, Gate.ERROR_RATE, threshold)
    if t.paired:
        n, gamma = evidence.pairs, _ci_level(policy) / 2
        b_ci, c_ci = rate_bounds(evidence.discordant_candidate, n, gamma), rate_bounds(evidence.discordant_primary,
                                                                                       n, gamma)
        ci = (b_ci[0] - c_ci[1], b_ci[1] - c_ci[0])
    else:
        n = min(c.requests, p.requests)
        ci = _difference_bounds(c.errors, c.requests, p.errors, p.requests, _ci_level(policy) / 2)
    estimate = c.errors / c.requests - p.errors / p.requests if min(c.requests, p.requests) else None
    verdict = _verdict(n, policy.min_samples, t.llr >= -math.log(alpha), t.llr <= t.fail_level)
    d = policy.gates.error_margin
    return GateResult(Gate.ERROR_RATE, verdict, estimate, t.fail_at, t.pass_at, threshold, n, ci[0], ci[1],
                      policy.confidence, (threshold - d, threshold + d), t.paired, _sprt_name(t))


def latency_gate(evidence: StepEvidence, policy: RolloutPolicy, threshold: float) -> GateResult:
    """Candidate quantile (p99) over primary's against `max_latency_ratio`, with an indifference
    factor f = `latency_indifference`: a candidate at gate x f or slower passes with probability
    about alpha, one at gate / f or faster fails with probability about beta, in between either
    may happen.

    The test is the SPRT of the log quantile ratio (`router.analysis.quantile_sprt`): a normal
    approximation with standard errors from the order statistics, measured in bench/decisions.py.
    Where it cannot run (no indifference zone, a quantile in the +Inf bucket) each side's quantile
    has a confidence sequence from its rank count (`_quantile_bounds`) instead: the test passes when
    candidate upper / primary lower (each at alpha/2) is at most gate x f, and fails when candidate
    lower / primary upper (each at beta/2) exceeds gate / f. `low` and `high` are the gates at and
    below which the test would fail, and at and above which it would pass.

    On shadowed steps the paired test (`router.analysis.paired_latency`) runs beside it, each at
    half of alpha and of beta, and either may decide (a union bound): pairing is faster where the
    two sides' latencies move together. When both a pass and a fail are shown, the truth is inside
    the zone and the estimate's side of the gate decides.
    """
    g = policy.gates
    q, f, c, p = g.latency_quantile, g.latency_indifference, evidence.candidate.latency, evidence.primary.latency
    alpha, beta = error_budget(policy)
    paired = _paired_latency(evidence, policy, threshold)
    share = 1.0 if paired is None else 0.5
    n = min(sum(c), sum(p))
    estimate = _ratio(_quantile_estimate(c, q), _quantile_estimate(p, q))
    sprt = quantile_sprt(c, p, q, threshold, f, share * alpha, share * beta)
    low: float | None
    high: float | None
    if sprt is not None:
        low, high = sprt.fail_at, sprt.pass_at
        passes, fails = sprt.llr >= -math.log(share * alpha), sprt.llr <= math.log(share * beta)
        test = "quantile SPRT"
    else:
        upper = _ratio(_quantile_bounds(c, q, share * alpha / 2)[1], _quantile_bounds(p, q, share * alpha / 2)[0])
        lower = _ratio(_quantile_bounds(c, q, share * beta / 2)[0], _quantile_bounds(p, q, share * beta / 2)[1])
        low, high = None if lower is None else lower * f, None if upper is None else upper / f
        passes, fails = high is not None and high <= threshold, low is not None and low > threshold
        test = "quantile confidence sequences"
    if paired is not None:
        paired_pass, paired_fail = paired_claims(paired, p, q, share * alpha, share * beta)
        passes, fails = passes or paired_pass, fails or paired_fail
        test = f"paired exceedances and {test}"
    if passes and fails:  # both tests reject: inside the zone, where the estimate decides
        fails = estimate is not None and estimate > threshold
        passes = not fails
    gamma = _ci_level(policy) / 4  # four one-sided ends, two per side
    ci = (_ratio(_quantile_bounds(c, q, gamma)[0], _quantile_bounds(p, q, gamma)[1]),
          _ratio(_quantile_bounds(c, q, gamma)[1], _quantile_bounds(p, q, gamma)[0]))
    return GateResult(Gate.LATENCY, _verdict(n, policy.min_samples, passes, fails), estimate, low, high, threshold, n,
                      ci[0], ci[1], policy.confidence, (threshold / f, threshold * f), paired is not None, test)


def _paired_latency(evidence: StepEvidence, policy: RolloutPolicy, threshold: float) -> PairedLatency | None:
    """The paired exceedance counts, when every request on both sides is a counted pair and they
    were taken at this gate's factors (`router.analysis.paired_latency`); else None (unpaired)."""
    counts, f = evidence.paired_latency, policy.gates.latency_indifference
    if counts is None or not evidence.paired:
        return None
    wanted = (threshold * f, threshold / f)
    return counts if all(math.isclose(a, b) for a, b in zip(counts.factors, wanted, strict=True)) else None


def accuracy_gate(evidence: StepEvidence, policy: RolloutPolicy, threshold: float) -> GateResult:
    """Candidate accuracy minus primary's, from user feedback, against `min_accuracy_delta`: the
    error-rate SPRT mirrored (higher is better), d = `accuracy_indifference`. On a shadowed step
    whose feedback scored both predictions of each request against the same truth, it reads only
    the pairs where exactly one side was right (McNemar, as the error gate's paired test); otherwise
    the two sides' labelled predictions are independent samples. `low`: every gate at or below it
    would pass; `high`: every gate above it would fail."""
    c, p = evidence.candidate, evidence.primary
    alpha = error_budget(policy)[0]
    t = difference_sprt(evidence, policy, Gate.ACCURACY, threshold)
    n = evidence.labelled_pairs if t.paired else min(c.labelled, p.labelled)
    estimate = c.correct / c.labelled - p.correct / p.labelled if min(c.labelled, p.labelled) else None
    verdict = _verdict(n, policy.min_samples, t.llr >= -math.log(alpha), t.llr <= t.fail_level)
    ci = _difference_bounds(c.correct, c.labelled, p.correct, p.labelled, _ci_level(policy) / 2)
    d = policy.gates.accuracy_margin
    return GateResult(Gate.ACCURACY, verdict, estimate, t.pass_at, t.fail_at, threshold, n, ci[0], ci[1],
                      policy.confidence, (threshold - d, threshold + d), t.paired, _sprt_name(t))


def _sprt_name(t: Sprt) -> str:
    return "paired SPRT (discordant pairs)" if t.paired else "unpaired SPRT"


def evaluate_gates(snapshot: Snapshot, policy: RolloutPolicy) -> tuple[GateResult, ...]:
    """The gates that apply to this step: agreement only where shadowed, accuracy only with feedback."""
    g, ev, results = policy.gates, snapshot.evidence, []
    if g.min_agreement is not None and snapshot.shadowed:
        results.append(agreement_gate(ev, policy, g.min_agreement))
    if g.max_error_rate_increase is not None:
        results.append(error_rate_gate(ev, policy, g.max_error_rate_increase))
    if g.max_latency_ratio is not None and g.latency_test == "stochastic":
        results.append(stochastic_latency_gate(ev, policy))
    elif g.max_latency_ratio is not None:
        results.append(latency_gate(ev, policy, g.max_latency_ratio))
    if g.min_accuracy_delta is not None and snapshot.feedback:
        results.append(accuracy_gate(ev, policy, g.min_accuracy_delta))
    results += llm_gates(snapshot.llm or LlmEvidence(), policy)
    return tuple(results)


# -- LLM gates: the machinery above over other histograms and counts -----------------------------


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
    low = rate_bounds(score, n, alpha)[0]  # type: ignore[arg-type]
    high = rate_bounds(score, n, beta)[1]  # type: ignore[arg-type]
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
