"""The opt-in latency test of stochastic order (`gates.latency_test: stochastic`).

The quantile gate asks about one point of the latency distribution (p99). Some users care about
the whole distribution shifting instead, as in Netflix's sequential tests of regressions in
deployments (Lindon, Sanden and Shirikian, "Rapid regression detection in software deployments
through sequential testing", KDD 2022). This test asks: is the candidate's latency larger than
c x the primary's on more than half of the comparisons? With theta_c = P(candidate > c x primary):

* the window compares one candidate latency with one primary latency per request on shadowed
  steps (the same request, so what both sides share cancels out), and pairs the two sides'
  samples in order of arrival on canary steps (independent draws, so theta is the Mann-Whitney
  probability P(Y > c X) of the two distributions). Either way the comparisons are independent
  Bernoulli(theta_c) trials, counted as plain summable integers;
* a candidate that is the primary's distribution scaled by r has theta_c < 1/2 exactly when
  r < c (for the paired case: when the median of the per-request ratio is below c);
* pass: a one-sided mixture of likelihood ratios (`sequential.below_half`, at alpha) shows theta at
  c = gate x f below 1/2 -- the candidate is not gate x f or more slower; fail: the same (at beta)
  shows theta at c = gate / f above 1/2 -- it is not gate / f or faster. Both: inside the zone,
  and the comparisons at both factors together decide which side of the gate it is on. Ville's
  inequality holds the error rates at every look.

It tests the distribution's bulk, not its tail: a candidate with the same median but a slower
p99 can pass it, which is why it is opt-in and the quantile test stays the default.
"""

from __future__ import annotations

from router.analysis.rollout_types import Gate, GateResult, RolloutPolicy, StepEvidence, Verdict, error_budget
from router.analysis.sequential import below_half, rate_bounds

__all__ = ["stochastic_claims", "stochastic_latency_gate"]


def stochastic_claims(n: int, worse_pass: int, worse_fail: int, alpha: float, beta: float) -> tuple[bool, bool]:
    """(passes, fails) after n comparisons: worse_pass of them slower than gate x f times the
    primary, worse_fail slower than gate / f times it."""
    if n == 0:
        return False, False
    passes = below_half(worse_pass, n, alpha)
    fails = below_half(n - worse_fail, n, beta)  # the share not slower below a half
    if passes and fails:  # inside the zone: the share slower than about gate x the primary decides
        fails = worse_pass + worse_fail > n
        passes = not fails
    return passes, fails


def stochastic_latency_gate(evidence: StepEvidence, policy: RolloutPolicy) -> GateResult:
    """The latency gate as a test of stochastic order. `estimate`: the share of comparisons where the
    candidate was slower than the gate x the primary, approximated by the mean of the shares at the
    zone's two edges; `low`/`high`: confidence sequences on theta at the fail and pass factors."""
    alpha, beta = error_budget(policy)
    n, wp, wf = evidence.order_pairs, evidence.order_worse_pass, evidence.order_worse_fail
    passes, fails = stochastic_claims(n, wp, wf, alpha, beta)
    verdict = Verdict.INCONCLUSIVE if n < policy.min_samples else \
        Verdict.FAIL if fails else Verdict.PASS if passes else Verdict.INCONCLUSIVE
    low, high = (rate_bounds(wf, n, beta)[0], rate_bounds(wp, n, alpha)[1]) if n else (None, None)
    method = f"stochastic-order test ({'paired' if evidence.paired else 'unpaired'}: share slower than gate x primary)"
    # In share units, so no zone in the gate's units: the zone is the factors the comparisons used.
    return GateResult(Gate.LATENCY, verdict, (wp + wf) / (2 * n) if n else None, low, high, 0.5, n, None, None,
                      policy.confidence, None, evidence.paired, method)
