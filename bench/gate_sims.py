"""One step of each rollout gate under continuous looks, at the edges of its indifference zone.

Each run feeds a gate batches of simulated traffic and judges after every batch, as the loop does,
until a verdict or a cap. At the zone's bad edge a pass is a false pass (allowed: alpha); at its
good edge a fail is a false fail (allowed: beta, the per-gate share of the rollout's budget).
Beside each gate: the fixed-size test with the same alpha and beta (one look, at n fixed in advance).

The error-rate and accuracy gates are judged here by their log likelihood ratio against Wald's
thresholds, which is exactly their verdict (tests/test_gates.py checks it); computing the test
boundaries for the decision log at every look would only slow the simulation down.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from statistics import NormalDist

import numpy as np

from router.analysis.decision import (
    LATENCY_BUCKETS_S,
    Gates,
    PairedLatency,
    Phase,
    RolloutPolicy,
    RolloutState,
    SideCounts,
    Snapshot,
    StepEvidence,
    Verdict,
    agreement_gate,
    error_budget,
    latency_gate,
)
from router.analysis.expectation import gate_expectations
from router.analysis.gates import sprt_verdict
from router.analysis.stochastic import stochastic_latency_gate

POLICY = RolloutPolicy()  # the defaults: agreement, error-rate and latency gates
ALPHA, BETA = error_budget(POLICY)
WITH_ACCURACY = RolloutPolicy(gates=Gates(min_accuracy_delta=-0.01))  # its own beta: four gates share it
Z = NormalDist().inv_cdf
BUCKETS = np.array(LATENCY_BUCKETS_S)

# A batch of traffic: (successes or a histogram, ...) for one look; a judge maps the running sums to a verdict.
Draw = Callable[[np.random.Generator], tuple[int, ...]]
Judge = Callable[[tuple[int, ...]], Verdict]


@dataclass(frozen=True)
class Case:
    """One gate at one edge of its zone: what a wrong verdict is there, and how to simulate it."""

    gate: str
    truth: str
    wrong: Verdict
    draw: Draw
    judge: Judge
    batch: int  # samples per side per look
    cap: int  # samples per side after which the run counts as inconclusive


@dataclass(frozen=True)
class Outcome:
    wrong: float
    inconclusive: float
    median: float
    p90: float


def run(case: Case, runs: int, rng: np.random.Generator) -> Outcome:
    wrong = stuck = 0
    used: list[int] = []
    for _ in range(runs):
        totals: tuple[int, ...] = ()
        for n in range(case.batch, case.cap + 1, case.batch):
            batch = case.draw(rng)
            totals = batch if not totals else tuple(a + b for a, b in zip(totals, batch, strict=True))
            verdict = case.judge(totals)
            if verdict is not Verdict.INCONCLUSIVE:
                wrong += verdict is case.wrong
                used.append(n)
                break
        else:
            stuck += 1
            used.append(case.cap)
    return Outcome(wrong / runs, stuck / runs, float(np.median(used)), float(np.percentile(used, 90)))


# -- agreement ------------------------------------------------------------------------------------


def agreement_cases() -> tuple[list[Case], int]:
    gate, d = POLICY.gates.min_agreement or 0.99, POLICY.gates.agreement_indifference

    def judge(t: tuple[int, ...]) -> Verdict:
        return agreement_gate(StepEvidence(t[0], t[1]), POLICY, gate).verdict

    def case(p: float, truth: str, wrong: Verdict) -> Case:
        return Case("agreement", truth, wrong, lambda rng: (25, int(rng.binomial(25, p))), judge, 25, 20_000)

    bad, good = gate - d, gate + d
    n = ((Z(1 - ALPHA) * math.sqrt(bad * (1 - bad)) + Z(1 - BETA) * math.sqrt(good * (1 - good))) / (2 * d)) ** 2
    return [case(bad, f"{bad:g}", Verdict.PASS), case(good, f"{good:g}", Verdict.FAIL)], math.ceil(n)


# -- error rate -----------------------------------------------------------------------------------

BASE_ERRORS = 0.01


def _sprt_verdict(paired: bool, counts: tuple[int, ...], after: tuple[int, ...], good: float, bad: float, n: int,
                  policy: RolloutPolicy = POLICY) -> Verdict:
    """The error-rate and accuracy gates' verdict from their log likelihood ratio and fail level."""
    alpha, beta = error_budget(policy)
    if n < policy.min_samples:
        return Verdict.INCONCLUSIVE
    llr, level = sprt_verdict(paired, counts, after, good, bad, alpha, beta)
    if llr <= level:
        return Verdict.FAIL
    return Verdict.PASS if llr >= -math.log(alpha) else Verdict.INCONCLUSIVE


def error_cases(paired: bool, shared: float | None = None) -> tuple[list[Case], int]:
    """Unpaired (a canary step), or paired (a shadowed step) with independent errors, or with a
    share `shared` of the primary's errors also failing the candidate (a bad input, a dependency)."""
    gate, d = POLICY.gates.max_error_rate_increase or 0.0, POLICY.gates.error_margin
    good, bad, p = gate - d, gate + d, BASE_ERRORS
    batch = 100
    if paired:
        def judge(t: tuple[int, ...]) -> Verdict:
            return _sprt_verdict(True, (t[1], t[2], t[0]), (t[1] + 1, t[2], t[0] + 1), good, bad, t[0])

        def discordant(diff: float) -> tuple[float, float]:
            pc = p + diff
            both = pc * p if shared is None else shared * p
            return pc - both, p - both

        draw_for, var = _discordant_pairs(discordant, batch)
    else:
        def judge(t: tuple[int, ...]) -> Verdict:
            return _sprt_verdict(False, (t[1], t[0], t[2], t[0]), (t[1] + 1, t[0] + 1, t[2], t[0]), good, bad, t[0])

        def draw_for(diff: float) -> Draw:
            return lambda rng: (batch, int(rng.binomial(batch, p + diff)), int(rng.binomial(batch, p)))

        def var(diff: float) -> float:
            return (p + diff) * (1 - p - diff) + p * (1 - p)
    name = "error rate" if not paired else "error, paired" if shared is None else f"error, {shared:.0%} shared"
    cases = [Case(name, f"+{bad:g}", Verdict.PASS, draw_for(bad), judge, batch, 60_000),
             Case(name, f"+{good:g}", Verdict.FAIL, draw_for(good), judge, batch, 60_000)]
    n = ((Z(1 - ALPHA) * math.sqrt(var(bad)) + Z(1 - BETA) * math.sqrt(var(good))) / (bad - good)) ** 2
    return cases, math.ceil(n)


# -- accuracy -------------------------------------------------------------------------------------

BASE_ACCURACY = 0.9


def accuracy_cases() -> tuple[list[Case], int]:
    gate, d = WITH_ACCURACY.gates.min_accuracy_delta or 0.0, WITH_ACCURACY.gates.accuracy_margin
    good, bad, p, batch = gate + d, gate - d, BASE_ACCURACY, 100
    alpha, beta = error_budget(WITH_ACCURACY)

    def judge(t: tuple[int, ...]) -> Verdict:
        return _sprt_verdict(False, (t[1], t[0], t[2], t[0]), (t[1], t[0] + 1, t[2], t[0]), good, bad, t[0],
                             WITH_ACCURACY)

    def draw_for(diff: float) -> Draw:
        return lambda rng: (batch, int(rng.binomial(batch, p + diff)), int(rng.binomial(batch, p)))

    def var(diff: float) -> float:
        return (p + diff) * (1 - p - diff) + p * (1 - p)

    cases = [Case("accuracy", f"{bad:+g}", Verdict.PASS, draw_for(bad), judge, batch, 60_000),
             Case("accuracy", f"{good:+g}", Verdict.FAIL, draw_for(good), judge, batch, 60_000)]
    n = ((Z(1 - alpha) * math.sqrt(var(bad)) + Z(1 - beta) * math.sqrt(var(good))) / (good - bad)) ** 2
    return cases, math.ceil(n)


# -- latency --------------------------------------------------------------------------------------

MEDIAN_S, SIGMA = 0.05, 0.5  # lognormal latencies: p99 is about 3.2 times the median


# Latency shapes beside the lognormal: a heavy (Pareto, tail index 2.5) tail, and a bimodal one
# (3% of requests about 8x slower: the p99 sits in the slow mode, as with a cache miss or a retry).
SHAPES = ("lognormal", "pareto", "bimodal")


def draw_latencies(shape: str, rng: np.random.Generator, size: tuple[int, int]) -> np.ndarray:
    if shape == "lognormal":
        return MEDIAN_S * np.exp(SIGMA * rng.standard_normal(size))
    if shape == "pareto":
        return MEDIAN_S * (1 + rng.pareto(2.5, size))
    if shape == "bimodal":
        slow = rng.random(size) < 0.03
        return MEDIAN_S * np.exp(0.2 * rng.standard_normal(size)) * np.where(slow, 8.0, 1.0)
    raise ValueError(shape)


def latency_cases(ratios: tuple[float, ...] = (), shape: str = "lognormal") -> tuple[list[Case], int]:
    g = POLICY.gates
    gate, f, batch = g.max_latency_ratio or 1.25, g.latency_indifference, 100

    def judge(t: tuple[int, ...]) -> Verdict:
        half = len(t) // 2
        ev = StepEvidence(primary=SideCounts(sum(t[:half]), latency=t[:half]),
                          candidate=SideCounts(sum(t[half:]), latency=t[half:]))
        return latency_gate(ev, POLICY, gate).verdict

    def draw_for(ratio: float) -> Draw:
        def draw(rng: np.random.Generator) -> tuple[int, ...]:
            lat = draw_latencies(shape, rng, (2, batch))
            lat[1] *= ratio
            hists = [np.bincount(np.searchsorted(BUCKETS, side), minlength=len(BUCKETS) + 1) for side in lat]
            return tuple(int(x) for x in np.concatenate(hists))
        return draw

    edges = [(gate * f, Verdict.PASS), (gate / f, Verdict.FAIL)]
    edges += [(r, Verdict.PASS if r > gate else Verdict.FAIL) for r in ratios]
    name = "latency p99" if shape == "lognormal" else f"latency p99, {shape}"
    cases = [Case(name, f"x{r:.4g}", wrong, draw_for(r), judge, batch, 20_000) for r, wrong in edges]
    return cases, latency_fixed_sizes(shape)[1]


def _log_quantile_slope(shape: str, q: float) -> float:
    """d log Q(p) / dp at q: how far the log quantile moves per unit of probability (the sample
    quantile's standard error is sqrt(q(1-q)/n) times this). Exact for the lognormal and the
    Pareto; for the mixture, by finite differences on a large seeded sample."""
    if shape == "lognormal":
        return SIGMA / NormalDist().pdf(Z(q))
    if shape == "pareto":
        return 1 / (2.5 * (1 - q))
    sample = np.log(draw_latencies(shape, np.random.default_rng(0), (1, 4_000_000))[0])
    h = 0.002
    return float((np.quantile(sample, q + h) - np.quantile(sample, q - h)) / (2 * h))


def latency_fixed_sizes(shape: str = "lognormal") -> tuple[int, int]:
    """(parametric, distribution-free) fixed-size tests of the p99 ratio with the same error rates.

    The sample p99's log has sd s / sqrt(n) per side, s = sqrt(q(1-q)) x d log Q / dp (normal
    approximation). Parametric: the shape is known, so one threshold on the ratio of sample p99s
    separates the edges: sqrt(2) s (z_alpha + z_beta) <= 2 log f. Distribution-free: the test
    assumes nothing about the shape and reads order statistics as exact binomial confidence
    bounds, as the gate does with one look: pass when candidate upper / primary lower (each at
    alpha/2) <= gate x f, fail when candidate lower / primary upper (each at beta/2) > gate / f. Each
    bound sits z s beyond its sample quantile, so the good edge passes with probability 1 - beta when
    s (2 z_{alpha/2} + sqrt(2) z_beta) <= 2 log f, and the bad edge fails with probability 1 - alpha
    when s (2 z_{beta/2} + sqrt(2) z_alpha) <= 2 log f; n is the larger of the two.
    """
    q, f = POLICY.gates.latency_quantile, POLICY.gates.latency_indifference
    s = math.sqrt(q * (1 - q)) * _log_quantile_slope(shape, q)  # times 1 / sqrt(n)
    parametric = (math.sqrt(2) * s * (Z(1 - ALPHA) + Z(1 - BETA)) / (2 * math.log(f))) ** 2
    free = max(s * (2 * Z(1 - ALPHA / 2) + math.sqrt(2) * Z(1 - BETA)),
               s * (2 * Z(1 - BETA / 2) + math.sqrt(2) * Z(1 - ALPHA))) ** 2 / (2 * math.log(f)) ** 2
    return math.ceil(parametric), math.ceil(free)


def _per_threshold(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """How many of the ranges [lo, hi) cover each threshold index (the window's starts and ends)."""
    keep = lo < hi
    diff = np.zeros(len(BUCKETS) + 1, dtype=np.int64)
    np.add.at(diff, lo[keep], 1)
    np.add.at(diff, hi[keep], -1)
    return np.cumsum(diff)[:len(BUCKETS)]


def paired_latency_cases(shared: float, ratios: tuple[float, ...] = ()) -> tuple[list[Case], int]:
    """A shadowed step: each request's two latencies share a factor (log-correlation `shared`, the
    request's size or the host), and the gate reads them pair by pair."""
    g = POLICY.gates
    gate, f, batch, nb = g.max_latency_ratio or 1.25, g.latency_indifference, 100, len(BUCKETS)
    factors = (gate * f, gate / f)

    def judge(t: tuple[int, ...]) -> Verdict:
        a = np.asarray(t)
        hp, hc, rest = a[:nb + 1], a[nb + 1:2 * nb + 2], a[2 * nb + 2:].reshape(4, nb)
        n = int(hp.sum())
        pl = PairedLatency(factors, (tuple(rest[0].tolist()), tuple(rest[2].tolist())),
                           (tuple(rest[1].tolist()), tuple(rest[3].tolist())))
        ev = StepEvidence(primary=SideCounts(n, latency=tuple(hp.tolist())),
                          candidate=SideCounts(n, latency=tuple(hc.tolist())), pairs=n, paired_latency=pl)
        return latency_gate(ev, POLICY, gate).verdict

    def draw_for(ratio: float) -> Draw:
        def draw(rng: np.random.Generator) -> tuple[int, ...]:
            common = rng.standard_normal(batch)
            z = math.sqrt(shared) * common + math.sqrt(1 - shared) * rng.standard_normal((2, batch))
            live, shadow = MEDIAN_S * np.exp(SIGMA * z[0]), ratio * MEDIAN_S * np.exp(SIGMA * z[1])
            above = np.searchsorted(BUCKETS, live)
            parts = [np.bincount(above, minlength=nb + 1),
                     np.bincount(np.searchsorted(BUCKETS, shadow), minlength=nb + 1)]
            for factor in factors:
                over = np.searchsorted(BUCKETS, shadow / factor)
                parts += [_per_threshold(above, over), _per_threshold(over, above)]  # worse, better
            return tuple(int(x) for x in np.concatenate(parts))
        return draw

    edges = [(gate * f, Verdict.PASS), (gate / f, Verdict.FAIL)]
    edges += [(r, Verdict.PASS if r > gate else Verdict.FAIL) for r in ratios]
    name = f"latency p99, paired {shared:.0%}"
    cases = [Case(name, f"x{r:.4g}", wrong, draw_for(r), judge, batch, 20_000) for r, wrong in edges]
    return cases, latency_cases()[1]


def stochastic_cases(shared: float | None) -> tuple[list[Case], int]:
    """The stochastic-order test: shadowed (per-request comparisons, log-correlation `shared`) or a
    canary step (None: independent draws from each side, paired in order of arrival)."""
    g = POLICY.gates
    gate, f, batch = g.max_latency_ratio or 1.25, g.latency_indifference, 10
    factors, rho = (gate * f, gate / f), shared or 0.0
    # min_samples 10 and looks every 10 rather than 500 and 100: the bulk of two distributions 1.56x
    # apart separates in tens of comparisons, and the default floor would be all the table showed
    policy = replace(POLICY, min_samples=batch, gates=replace(g, latency_test="stochastic"))

    def judge(t: tuple[int, ...]) -> Verdict:
        ev = StepEvidence(pairs=t[0] if shared is not None else 0, order_pairs=t[0], order_worse_pass=t[1],
                          order_worse_fail=t[2])
        return stochastic_latency_gate(ev, policy).verdict

    def draw_for(ratio: float) -> Draw:
        def draw(rng: np.random.Generator) -> tuple[int, ...]:
            z = math.sqrt(rho) * rng.standard_normal(batch) + math.sqrt(1 - rho) * rng.standard_normal((2, batch))
            live, cand = np.exp(SIGMA * z[0]), ratio * np.exp(SIGMA * z[1])
            return batch, int((cand > factors[0] * live).sum()), int((cand > factors[1] * live).sum())
        return draw

    name = "stochastic, canary" if shared is None else f"stochastic, paired {rho:.0%}"
    name += f" (min {batch})"
    cases = [Case(name, f"x{r:.4g}", wrong, draw_for(r), judge, batch, 20_000)
             for r, wrong in ((gate * f, Verdict.PASS), (gate / f, Verdict.FAIL), (1.6, Verdict.PASS))]
    # Fixed size: one binomial test at the gate of theta = P(candidate > gate x primary), whose value
    # at each edge of the zone follows from the lognormal difference of logs.
    sd = SIGMA * math.sqrt(2 * (1 - rho))
    bad, good = NormalDist().cdf(math.log(f) / sd), NormalDist().cdf(-math.log(f) / sd)
    n = ((Z(1 - ALPHA) * math.sqrt(bad * (1 - bad)) + Z(1 - BETA) * math.sqrt(good * (1 - good))) / (bad - good)) ** 2
    return cases, math.ceil(n)


def paired_accuracy_cases(shared: float) -> tuple[list[Case], int]:
    """Feedback that scored both predictions of each shadowed request: a share `shared` of the
    primary's misses are missed by the candidate too (hard inputs)."""
    gate, d = WITH_ACCURACY.gates.min_accuracy_delta or 0.0, WITH_ACCURACY.gates.accuracy_margin
    good, bad, p, batch = gate + d, gate - d, BASE_ACCURACY, 100
    alpha, beta = error_budget(WITH_ACCURACY)

    def judge(t: tuple[int, ...]) -> Verdict:
        return _sprt_verdict(True, (t[1], t[2], t[0]), (t[1], t[2] + 1, t[0] + 1), good, bad, t[0], WITH_ACCURACY)

    def discordant(diff: float) -> tuple[float, float]:
        miss_p, miss_c = 1 - p, 1 - p - diff
        both = min(shared * miss_p, miss_c)
        return miss_p - both, miss_c - both  # only the candidate right, only the primary right

    draw_for, var = _discordant_pairs(discordant, batch)

    name = f"accuracy, paired {shared:.0%}"
    cases = [Case(name, f"{bad:+g}", Verdict.PASS, draw_for(bad), judge, batch, 60_000),
             Case(name, f"{good:+g}", Verdict.FAIL, draw_for(good), judge, batch, 60_000)]
    n = ((Z(1 - alpha) * math.sqrt(var(bad)) + Z(1 - beta) * math.sqrt(var(good))) / (good - bad)) ** 2
    return cases, math.ceil(n)


def all_cases() -> list[tuple[list[Case], int]]:
    return [agreement_cases(), error_cases(False), error_cases(True), error_cases(True, 0.5), accuracy_cases(),
            paired_accuracy_cases(0.5), latency_cases((1.6,)), latency_cases((1.6,), "pareto"),
            latency_cases((1.6,), "bimodal"), paired_latency_cases(0.0, (1.6,)),
            paired_latency_cases(0.8, (1.6,)), stochastic_cases(None), stochastic_cases(0.8)]


# -- expected sample size against the gate and its zone (docs/configuration.md) ---------------------


def zone_cases() -> list[tuple[str, list[Case]]]:
    """Agreement and error-rate gates across gates and zone widths, at both edges of each zone."""
    rows = []
    for gate in (0.95, 0.97, 0.98, 0.99):
        for d in (0.005, 0.01):
            if gate + d >= 1:
                continue
            policy = RolloutPolicy(gates=Gates(min_agreement=gate, agreement_indifference=d))

            def judge(t: tuple[int, ...], policy: RolloutPolicy = policy, gate: float = gate) -> Verdict:
                return agreement_gate(StepEvidence(t[0], t[1]), policy, gate).verdict

            cases = [Case("agreement", f"{p:g}", wrong, _binomial(25, p), judge, 25, 40_000)
                     for p, wrong in ((gate - d, Verdict.PASS), (gate + d, Verdict.FAIL))]
            rows.append((f"agreement {gate} -+{d}", cases))
    for gate, base in ((0.002, 0.01), (0.005, 0.01), (0.01, 0.01), (0.005, 0.001), (0.01, 0.05)):
        policy = RolloutPolicy(gates=Gates(max_error_rate_increase=gate))
        d = policy.gates.error_margin

        def judge_err(t: tuple[int, ...], policy: RolloutPolicy = policy, gate: float = gate) -> Verdict:
            good, bad = gate - policy.gates.error_margin, gate + policy.gates.error_margin
            return _sprt_verdict(False, (t[1], t[0], t[2], t[0]), (t[1] + 1, t[0] + 1, t[2], t[0]), good, bad,
                                 t[0], policy)

        cases = [Case("error rate", f"+{diff:g}", wrong, _two_binomials(100, base + diff, base), judge_err, 100,
                      200_000) for diff, wrong in ((gate + d, Verdict.PASS), (gate - d, Verdict.FAIL))]
        rows.append((f"error rate +{gate} -+{d:g} over {base:.1%}", cases))
    return rows


def _discordant_pairs(discordant: Callable[[float], tuple[float, float]],
                      batch: int) -> tuple[Callable[[float], Draw], Callable[[float], float]]:
    """For a paired design whose `discordant(diff)` gives the chances of the two kinds of discordant
    pair: a batch draw (batch, kind-1 count, kind-2 count), and the per-pair variance of the
    difference (for the fixed-size reference)."""
    def draw_for(diff: float) -> Draw:
        b, c = discordant(diff)
        return lambda rng: (batch, *(int(x) for x in rng.multinomial(batch, [b, c, 1 - b - c])[:2]))

    def var(diff: float) -> float:
        b, c = discordant(diff)
        return b + c - (b - c) ** 2

    return draw_for, var


def _binomial(batch: int, p: float) -> Draw:
    return lambda rng: (batch, int(rng.binomial(batch, p)))


def _two_binomials(batch: int, pc: float, pp: float) -> Draw:
    return lambda rng: (batch, int(rng.binomial(batch, pc)), int(rng.binomial(batch, pp)))


# -- the status page's estimate of the time to a verdict ------------------------------------------


@dataclass(frozen=True)
class EtaCase:
    """A gate at one edge, with the evidence its counts make and a policy where only it applies."""

    case: Case
    evidence: Callable[[tuple[int, ...]], StepEvidence]
    policy: RolloutPolicy
    shadowed: bool


def eta_cases() -> list[EtaCase]:
    only = {"agreement": Gates(max_latency_ratio=None, max_error_rate_increase=None),
            "error rate": Gates(min_agreement=None, max_latency_ratio=None),
            "latency p99": Gates(min_agreement=None, max_error_rate_increase=None)}

    def agreement(t: tuple[int, ...]) -> StepEvidence:
        return StepEvidence(t[0], t[1])

    def errors(t: tuple[int, ...]) -> StepEvidence:
        return StepEvidence(primary=SideCounts(t[0], t[2]), candidate=SideCounts(t[0], t[1]))

    def latency(t: tuple[int, ...]) -> StepEvidence:
        half = len(t) // 2
        return StepEvidence(primary=SideCounts(sum(t[:half]), latency=t[:half]),
                            candidate=SideCounts(sum(t[half:]), latency=t[half:]))

    out = []
    for cases, evidence, shadowed in ((agreement_cases()[0], agreement, True), (error_cases(False)[0], errors, False),
                                      (latency_cases()[0], latency, False)):
        out += [EtaCase(c, evidence, replace(POLICY, gates=only[c.gate]), shadowed) for c in cases]
    return out


def eta_run(eta: EtaCase, runs: int, rng: np.random.Generator) -> tuple[list[float], list[int]]:
    """(predicted, actual) further samples per side, from the first look at min_samples or more that
    has no verdict yet (where the status page first shows an estimate) to the verdict (the cap if none)."""
    case, predicted, actual = eta.case, [], []
    for _ in range(runs):
        totals: tuple[int, ...] = ()
        looked_at = 0
        for n in range(case.batch, case.cap + 1, case.batch):
            batch = case.draw(rng)
            totals = batch if not totals else tuple(a + b for a, b in zip(totals, batch, strict=True))
            if case.judge(totals) is not Verdict.INCONCLUSIVE:
                break
            if not looked_at and n >= eta.policy.min_samples:
                phase = Phase.SHADOWING if eta.shadowed else Phase.PROGRESSING
                snap = Snapshot(RolloutState(phase), eta.evidence(totals), 1.0, 0.0, 0.0, shadowed=eta.shadowed)
                (expected,) = gate_expectations(snap, eta.policy)
                predicted.append(expected.samples)
                looked_at = n
        if looked_at:
            actual.append(n - looked_at)
    return predicted, actual


# -- what no sequential test can beat ---------------------------------------------------------------


def _kl(p: np.ndarray, r: np.ndarray) -> np.ndarray:
    """KL divergence between categorical distributions along the last axis (0 log 0 = 0)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(p > 0, p * np.log(p / r), 0.0).sum(axis=-1)


def _nearest(truth: np.ndarray, others: np.ndarray) -> float:
    """min KL(truth || other) over the other hypothesis' distributions (its nuisance profiled)."""
    return float(np.min(_kl(truth, others)))


def wald_bounds() -> list[tuple[str, str, float]]:
    """Wald's lower bound on the *mean* samples to a verdict of any sequential test with this gate's
    alpha and beta, at each edge of the error-rate zone: [(1 - a) log((1 - a) / b) + a log(a / (1 - b))]
    / KL, where a and b are the error rates the edge must respect and KL is the divergence from the
    edge to the nearest distribution of the other edge (the primary's rate or the discordance free).
    A median can sit a little below it; half a fixed-size test cannot, where this is above it."""
    g = POLICY.gates
    gate, d, p = g.max_error_rate_increase or 0.0, g.error_margin, BASE_ERRORS
    good, bad = gate - d, gate + d
    t = np.linspace(1e-5, 0.2, 40_000)[:, None]

    def need(kl: float, right: float, wrong_other: float) -> float:
        return ((1 - right) * math.log((1 - right) / wrong_other) + right * math.log(right / (1 - wrong_other))) / kl

    def unpaired(diff: float) -> np.ndarray:  # a sample from each side: (candidate err, ok, primary err, ok)
        return np.concatenate([np.concatenate([diff + t, 1 - diff - t], axis=1), np.concatenate([t, 1 - t], axis=1)],
                              axis=1)

    def paired(diff: float) -> np.ndarray:  # (only the candidate erred, only the primary, neither or both)
        return np.concatenate([t + diff, t, 1 - 2 * t - diff], axis=1)

    rows = []
    truths = {"error rate": (lambda x: np.array([p + x, 1 - p - x, p, 1 - p]), unpaired),
              "error, paired": (lambda x: np.array([(p + x) * (1 - p), p * (1 - p - x), 1 - (p + x) * (1 - p)
                                                    - p * (1 - p - x)]), paired),
              "error, 50% shared": (lambda x: np.array([p + x - p / 2, p / 2, 1 - (p + x - p / 2) - p / 2]), paired)}
    for name, (truth, family) in truths.items():
        rows.append((name, f"+{bad:g}", need(_nearest(truth(bad), family(good)), ALPHA, BETA)))
        rows.append((name, f"+{good:g}", need(_nearest(truth(good), family(bad)), BETA, ALPHA)))
    return rows
