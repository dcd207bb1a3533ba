"""Monte Carlo of the rollout gates: error rates and samples to a verdict under continuous looks.

First every gate alone for one step, at the edges of its indifference zone, beside the
fixed-size test with the same error rates (`bench/gate_sims.py`). Then whole rollouts of the
agreement gate through the real `decide()`:

Thousands of rollouts with a known true agreement are fed to `router.analysis.decision.decide` the way the
loop sees them: a batch of 50 shadow comparisons every 5 s, one evaluation per batch, counters
reset when a step advances. A batch is drawn as Binomial(50, p), exactly the sum of 50 Bernoulli
comparisons, since `decide` only sees the counts. Beside it, the naive rule (agreement >= gate
after 500 comparisons) and a fixed-sample-size test with the same per-step error rates.

    python bench/decisions.py [--runs 1000] [--step-runs 500] [--seed 1]
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from statistics import NormalDist

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import gate_sims  # bench/ is the script's directory, so on sys.path

from router.analysis.decision import (
    Action,
    Gates,
    RolloutPolicy,
    Snapshot,
    StepEvidence,
    decide,
    error_budget,
    initial_state,
)

GATE, HALF_ZONE = 0.99, 0.005
BAD, GOOD = GATE - HALF_ZONE, GATE + HALF_ZONE
BATCH, TICK_S, NAIVE_N = 50, 5.0, 500
POLICY = RolloutPolicy(gates=Gates(min_agreement=GATE, agreement_indifference=HALF_ZONE,
                                   max_latency_ratio=None, max_error_rate_increase=None))
JUDGED = len(POLICY.steps) - 1  # the move onto the last step is the promotion itself


@dataclass(frozen=True)
class Figures:
    """One rule's results: error rates over whole rollouts and comparisons per step decision."""

    false_promotion: float  # true agreement BAD: the candidate left its first (shadow) step
    false_rollback: float  # true agreement GOOD: rolled back at any step
    n_bad: np.ndarray  # comparisons used by each step decision, true agreement BAD
    n_good: np.ndarray
    timeouts: int = 0


def rollout(p: float, rng: np.random.Generator) -> tuple[bool, Action, list[int]]:
    """One rollout through decide(): (left the first step, final action, comparisons per step)."""
    state, step_started, n, k, used = initial_state(POLICY), 0.0, 0, 0, []
    ticks = math.ceil(POLICY.max_duration_s / TICK_S)  # decide() times out by the last tick
    for i, agreed in enumerate(rng.binomial(BATCH, p, size=ticks).tolist(), start=1):
        n, k, now = n + BATCH, k + agreed, i * TICK_S
        d = decide(Snapshot(state, StepEvidence(n, k), now, step_started, 0.0, shadowed=True), POLICY)
        if d.action is Action.HOLD:
            continue
        used.append(n)
        if d.action is not Action.ADVANCE:
            return len(used) > 1, d.action, used
        state, step_started, n, k = d.state, now, 0, 0
    raise AssertionError("decide() never reached the deadline")


def sequential(runs: int, rng: np.random.Generator) -> Figures:
    bad = [rollout(BAD, rng) for _ in range(runs)]
    good = [rollout(GOOD, rng) for _ in range(runs)]
    timeouts = sum(end is Action.PAUSE for _, end, _ in bad + good)
    return Figures(
        false_promotion=float(np.mean([left for left, _, _ in bad])),
        false_rollback=float(np.mean([end is Action.ROLLBACK for _, end, _ in good])),
        n_bad=np.array([n for _, _, used in bad for n in used]),
        n_good=np.array([n for _, _, used in good for n in used]),
        timeouts=timeouts,
    )


def fixed_size(alpha: float, beta: float) -> tuple[int, float]:
    """n and the critical agreement count of the one-sided fixed-n test of BAD against GOOD."""
    z = NormalDist().inv_cdf
    n = math.ceil(((z(1 - alpha) * math.sqrt(BAD * (1 - BAD)) + z(1 - beta) * math.sqrt(GOOD * (1 - GOOD)))
                   / (GOOD - BAD)) ** 2)
    return n, n * BAD + z(1 - alpha) * math.sqrt(n * BAD * (1 - BAD))


def one_shot(runs: int, n: int, critical: float, rng: np.random.Generator) -> Figures:
    """A rule that looks once per step, after n comparisons: pass if agreements >= critical."""
    bad = rng.binomial(n, BAD, size=(runs, JUDGED)) >= critical
    good = rng.binomial(n, GOOD, size=(runs, JUDGED)) >= critical
    # Steps after the first failure never run, so each rollout made (failures before it + 1) decisions.
    steps_bad = np.minimum(np.argmin(bad, axis=1) + 1, JUDGED)
    steps_good = np.where(good.all(axis=1), JUDGED, np.argmin(good, axis=1) + 1)
    return Figures(float(bad[:, 0].mean()), float((~good.all(axis=1)).mean()),
                   np.full(int(steps_bad.sum()), n), np.full(int(steps_good.sum()), n))


def percent(x: float, runs: int) -> str:
    """A rate with its 95% Monte Carlo margin (normal approximation, floored at one event)."""
    margin = 1.96 * math.sqrt(max(x, 1 / runs) * (1 - x) / runs)
    return f"{100 * x:.2f}% +-{100 * margin:.2f}"


def table(rows: list[tuple[str, Figures]], runs: int) -> str:
    head = (f"{'rule':<34}{'false promotion':>17}{'false rollback':>17}"
            f"{'median n':>18}{'p90 n':>18}{'timeouts':>10}")
    sub = f"{'':<34}{f'(true {BAD})':>17}{f'(true {GOOD})':>17}{'(0.985 | 0.995)':>18}{'(0.985 | 0.995)':>18}"
    lines = [head, sub, "-" * len(head)]
    for name, f in rows:
        med = f"{np.median(f.n_bad):,.0f} | {np.median(f.n_good):,.0f}"
        p90 = f"{np.percentile(f.n_bad, 90):,.0f} | {np.percentile(f.n_good, 90):,.0f}"
        lines.append(f"{name:<34}{percent(f.false_promotion, runs):>17}{percent(f.false_rollback, runs):>17}"
                     f"{med:>18}{p90:>18}{f.timeouts:>10}")
    return "\n".join(lines)


def gate_table(runs: int, rng: np.random.Generator) -> tuple[str, list[tuple[str, bool]]]:
    """Every gate for one step at its zone's edges, and the issue's targets checked."""
    head = (f"{'gate':<34}{'true value':>12}{'wrong verdict':>20}{'inconclusive':>15}{'median n':>10}"
            f"{'p90 n':>9}{'fixed n':>9}{'median/fixed':>14}")
    lines, medians, ratios, fixed_n = [head, "-" * len(head)], {}, {}, {}
    for cases, fixed in gate_sims.all_cases():
        for case in cases:
            o = gate_sims.run(case, runs, rng)
            medians[(case.gate, case.truth)] = o.median
            ratios[(case.gate, case.truth)] = o.median / fixed
            fixed_n[(case.gate, case.truth)] = fixed
            wrong = f"{case.wrong} {percent(o.wrong, runs)}"
            lines.append(f"{case.gate:<34}{case.truth:>12}{wrong:>20}{100 * o.inconclusive:>14.1f}%"
                         f"{o.median:>10,.0f}{o.p90:>9,.0f}{fixed:>9,}{o.median / fixed:>14.2f}")
    shapes = {shape: gate_sims.latency_fixed_sizes(shape) for shape in gate_sims.SHAPES}
    lines.append("latency p99 fixed n: the distribution-free test (order statistics as exact binomial bounds, the "
                 "shape unknown, as the gate's fallback) is the reference in the table;\n  a parametric test that "
                 "knows the shape would need " + ", ".join(f"{p:,} ({shape})" for shape, (p, _) in shapes.items()))
    lines.append("Wald's lower bound on the mean samples to a verdict of any sequential test with these error rates "
                 "(a median may sit a little below it):\n  " + "; ".join(
                     f"{name} {truth}: {bound:,.0f} ({bound / fixed_n[(name, truth)]:.2f} x fixed)"
                     for name, truth, bound in gate_sims.wald_bounds()))
    latency = [k for k in medians if k[0].startswith("latency p99") and k[1] in ("x1", "x1.6")]
    checks = [("error rate median <= 10,000 per side",
               max(v for (g, _), v in medians.items() if g.startswith("error")) <= 10_000),
              ("error rate median <= 0.5 x fixed at both edges",
               max(v for (g, _), v in ratios.items() if g == "error rate") <= 0.5),
              ("latency median <= 3,500 per side at x1 and x1.6", max(medians[k] for k in latency) <= 3_500),
              ("latency median <= 0.5 x the distribution-free fixed n", max(ratios[k] for k in latency) <= 0.5)]
    return "\n".join(lines), checks


def eta_table(runs: int, rng: np.random.Generator) -> str:
    """The status page's "a verdict is expected in about N" against the samples it actually took."""
    head = (f"{'gate':<22}{'true value':>12}{'runs':>6}{'predicted: median':>19}{'actual: median':>16}"
            f"{'actual <= predicted':>21}{'within 0.5-2x':>15}")
    lines = [head, "-" * len(head)]
    for eta in gate_sims.eta_cases():
        predicted, actual = gate_sims.eta_run(eta, runs, rng)
        if not actual:
            continue
        p, a = np.array(predicted), np.array(actual)
        ok = float(np.mean(a <= p))
        within = float(np.mean((a >= 0.5 * p) & (a <= 2 * p)))
        lines.append(f"{eta.case.gate:<22}{eta.case.truth:>12}{len(a):>6}{np.median(p):>19,.0f}{np.median(a):>16,.0f}"
                     f"{100 * ok:>20.0f}%{100 * within:>14.0f}%")
    return "\n".join(lines)


def zone_table(runs: int, rng: np.random.Generator) -> str:
    """Median samples to a verdict at each edge of the zone, for several gates and zone widths."""
    lines = [f"{'gate and zone':<36}{'bad edge: median | p90':>26}{'good edge: median | p90':>26}", "-" * 88]
    for name, cases in gate_sims.zone_cases():
        cells = []
        for case in cases:
            o = gate_sims.run(case, runs, rng)
            cells.append(f"{case.truth} {o.median:,.0f} | {o.p90:,.0f}")
        lines.append(f"{name:<36}{cells[0]:>26}{cells[1]:>26}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1000, help="rollouts per true agreement (default 1000)")
    parser.add_argument("--step-runs", type=int, default=500, help="single steps per gate and edge (default 500)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--zones", action="store_true",
                        help="only the table of samples to a verdict against the gate and its zone (slow)")
    args = parser.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    started = time.perf_counter()
    if args.zones:
        print(zone_table(args.step_runs, rng))
        print(f"({time.perf_counter() - started:.1f} s)")
        return 0
    g = gate_sims.POLICY.gates
    print(f"Each gate alone for one step, {args.step_runs} runs per row, seed {args.seed}, looks after every batch "
          f"(25 comparisons, else 100 samples per side); confidence {gate_sims.POLICY.confidence}, alpha "
          f"{gate_sims.ALPHA:.3g}, beta {gate_sims.BETA:.3g} (accuracy: four gates share beta)")
    print(f"zones: agreement {g.min_agreement} -+{g.agreement_indifference}; error rate +{g.max_error_rate_increase} "
          f"-+{g.error_margin} over a {gate_sims.BASE_ERRORS:.0%} primary (paired: independent errors); "
          f"accuracy -0.01 -+{gate_sims.WITH_ACCURACY.gates.accuracy_margin} at {gate_sims.BASE_ACCURACY:.0%}; "
          f"latency p99 "
          f"{g.max_latency_ratio} x/ {g.latency_indifference} (lognormal, sigma {gate_sims.SIGMA}; pareto: tail "
          f"index 2.5; bimodal: 3% of requests 8x slower)")
    print("paired N%: a shadowed step whose two latencies (or errors, or misses) share N% of their variation "
          "(paired 0%: independent);\nstochastic: the opt-in stochastic-order latency test, factors gate x f and "
          "gate / f, fixed n = one binomial test at the gate")
    print("wrong verdict: a pass at the bad edge (or beyond), a fail at the good edge; n: samples per side "
          "(pairs when paired) at the verdict; caps 20,000 (agreement, latency), 60,000 (the others)\n")
    text, gate_checks = gate_table(args.step_runs, rng)
    print(text + "\n")
    eta_runs = max(args.step_runs // 2, 1)
    print(f"The status page's estimate of the samples still needed, taken at the first look past min_samples "
          f"({gate_sims.POLICY.min_samples}) without a verdict, against the samples the run then took "
          f"({eta_runs} runs; runs decided before min_samples have no estimate):\n")
    print(eta_table(eta_runs, rng) + "\n")
    alpha, beta = error_budget(POLICY)
    n_fixed, critical = fixed_size(alpha, beta)
    seq = sequential(args.runs, rng)
    rows = [
        ("sequential: decide() (SPRT)", seq),
        (f"naive: >= {GATE} after {NAIVE_N}", one_shot(args.runs, NAIVE_N, GATE * NAIVE_N, rng)),
        (f"fixed n = {n_fixed:,} (same alpha, beta)", one_shot(args.runs, n_fixed, critical, rng)),
    ]
    print(f"{args.runs} rollouts per case, seed {args.seed}; gate {GATE}, indifference +-{HALF_ZONE}; steps "
          f"{'/'.join(f'{s:g}' for s in POLICY.steps)} ({JUDGED} judged, every one shadowed); {BATCH} comparisons per "
          f"evaluation every {TICK_S:g} s; min_samples {POLICY.min_samples}; max_duration {POLICY.max_duration_s:g} s")
    print(f"per judged step: alpha {alpha:.4g} (false pass), beta {beta:.4g} (false fail; {JUDGED} steps share "
          f"{1 - POLICY.confidence:.2g}); fixed-n for alpha = beta = 0.01 would be {fixed_size(0.01, 0.01)[0]:,}")
    print("false promotion: a true-0.985 candidate left its shadow step; false rollback: a true-0.995 one was "
          "rolled back at any step;\n+- is the 95% Monte Carlo margin of a rate; n: comparisons per step decision\n")
    print(table(rows, args.runs))
    checks = [("false promotion <= 1%", seq.false_promotion <= 0.01),
              ("false rollback <= 1%", seq.false_rollback <= 0.01),
              (f"median n below the fixed n {n_fixed:,}", max(np.median(seq.n_bad), np.median(seq.n_good)) < n_fixed),
              *gate_checks]
    print("\ntargets: " + "; ".join(f"{name}: {'ok' if ok else 'MISSED'}" for name, ok in checks))
    print(f"({time.perf_counter() - started:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
