"""The two-rate SPRTs' fail boundary (router.analysis.boundaries): lower than Wald's early, higher
late, never spending more than beta by the change of measure it rests on."""

from __future__ import annotations

import math

import pytest

from router.analysis.boundaries import (
    EARLY,
    LATE,
    _early_level,
    _ig_cdf,
    fail_level,
    information_paired,
    information_unpaired,
)
from router.analysis.decision import RolloutPolicy, error_rate_gate
from router.analysis.rollout_types import SideCounts, StepEvidence, Verdict

BETA = 0.01 / 12


def test_fail_level_is_lower_than_walds_early_and_higher_late() -> None:
    wald = math.log(BETA)
    c1, switch = _early_level(BETA, 1.0)
    assert fail_level(BETA, 0.0, 0.0) == fail_level(BETA, switch, 0.0) == pytest.approx(-c1)
    assert wald + 0.3 < -c1 < wald + 0.6  # 0.3-0.6 nats nearer zero: fails sooner at the bad edge
    assert fail_level(BETA, switch * 1.01, 0.0) == fail_level(BETA, 1e6, 0.3) == wald - LATE
    assert fail_level(BETA, 0.0, 0.3) > fail_level(BETA, 0.0, 0.0)  # a jump's overshoot buys more
    assert 0 < switch < 2 * -wald  # before the flat test's mean crossing time


@pytest.mark.parametrize("beta", [0.01, BETA, 1e-4])
@pytest.mark.parametrize("credit", [1.0, 1.2])
def test_the_boundary_spends_exactly_beta_times_the_overshoot_credit(beta: float, credit: float) -> None:
    c1, switch = _early_level(beta, credit)
    early = _ig_cdf(switch, 2 * c1, c1 * c1)
    assert early == pytest.approx(EARLY, abs=1e-6)
    spent = math.exp(-c1) * early + beta * math.exp(-LATE) * (1 - early)
    assert spent == pytest.approx(beta * credit, rel=1e-6)
    assert c1 < -math.log(beta)


def test_inverse_gaussian_cdf() -> None:
    # mean 2c, shape c^2: the first passage of drift 1/2, variance 1 through c; median below the mean
    assert _ig_cdf(0.0, 10.0, 25.0) == 0.0
    assert 0.5 < _ig_cdf(10.0, 10.0, 25.0) < 0.7
    assert _ig_cdf(1000.0, 10.0, 25.0) == pytest.approx(1.0)


def test_information_grows_with_samples_and_falls_with_spread() -> None:
    assert information_unpaired(0, 0, 5, 100, 0.01) == 0.0 == information_paired(0, 0, 0, 0.01)
    assert information_unpaired(20, 2000, 20, 2000, 0.01) == pytest.approx(2 * information_unpaired(
        10, 1000, 10, 1000, 0.01), rel=0.05)
    assert information_unpaired(200, 2000, 200, 2000, 0.01) < information_unpaired(20, 2000, 20, 2000, 0.01)
    # pairs that err together leave few discordant pairs: far more information than independent samples
    assert information_paired(2, 2, 2000, 0.01) > 5 * information_unpaired(20, 2000, 20, 2000, 0.01)


@pytest.mark.parametrize(("errors", "verdict"), [
    ((3_000, 66, 3_000, 30), Verdict.FAIL),  # ratio -6.83: fails under the early boundary (-6.50), not Wald's (-7.09)
    ((3_000, 31, 3_000, 30), Verdict.PASS),
    ((3_000, 55, 3_000, 30), Verdict.INCONCLUSIVE),
])
def test_error_gate_on_fixed_counts(errors: tuple[int, int, int, int], verdict: Verdict) -> None:
    nc, kc, np_, kp = errors
    ev = StepEvidence(candidate=SideCounts(nc, kc), primary=SideCounts(np_, kp))
    assert error_rate_gate(ev, RolloutPolicy(), 0.005).verdict is verdict
