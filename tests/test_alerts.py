"""Anomaly alerts on simulated traffic: steady traffic stays silent, injected anomalies fire once."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pytest

from router.observe.alerts import Alert, AlertConfig, AnomalyDetector, binomial_sf, population_stability_index

MIX = {"a": 0.80, "b": 0.15, "c": 0.05}
SHIFTED = {"a": 0.50, "b": 0.30, "c": 0.20}


@dataclass(frozen=True)
class Phase:
    """`seconds` of Poisson traffic at `rate` req/s with lognormal latency and a label/score mix."""

    seconds: float
    rate: float = 50.0
    median_s: float = 0.05
    sigma: float = 0.4
    error_rate: float = 0.01
    mix: dict[str, float] = field(default_factory=lambda: MIX)
    scores: tuple[float, float] = (2.0, 5.0)  # beta distribution parameters


def simulate(detector: AnomalyDetector, phases: list[Phase], seed: int = 0, start: float = 1000.0,
             route: str = "fraud", backend: str = "v1") -> list[Alert]:
    """Drive the detector second by second through the phases; evaluate once a simulated second."""
    rng = np.random.default_rng(seed)
    alerts: list[Alert] = []
    now = start
    for phase in phases:
        labels, weights = list(phase.mix), list(phase.mix.values())
        for _ in range(int(phase.seconds)):
            n = int(rng.poisson(phase.rate))
            times = np.sort(rng.uniform(now, now + 1, n)).tolist()
            latency = (phase.median_s * rng.lognormal(0, phase.sigma, n)).tolist()
            errors = (rng.random(n) < phase.error_rate).tolist()
            drawn = rng.choice(len(labels), n, p=weights).tolist()
            scores = rng.beta(*phase.scores, n).tolist()
            for t, lat, err, i, sc in zip(times, latency, errors, drawn, scores, strict=True):
                detector.observe(backend, route, lat, err, None if err else labels[i], None if err else sc, t)
            now += 1
            alerts += detector.evaluate(now)
    return alerts


def kinds(alerts: list[Alert]) -> list[tuple[str, str]]:
    return [(a.kind, a.state) for a in alerts]


WARM = Phase(600)  # ten minutes of normal traffic to build baselines and the drift reference


@pytest.mark.parametrize(("seed", "rate", "sigma"), [(1, 50, 0.4), (2, 50, 1.0), (3, 5, 0.5), (4, 200, 0.3)])
def test_steady_traffic_raises_nothing(seed: int, rate: float, sigma: float) -> None:
    detector = AnomalyDetector()
    assert simulate(detector, [Phase(1200, rate=rate, sigma=sigma)], seed=seed) == []
    assert detector.active() == [] and not detector.suppressed


def test_latency_spike_fires_once_then_resolves() -> None:
    detector = AnomalyDetector()
    alerts = simulate(detector, [WARM, Phase(120, median_s=0.25), Phase(120)], seed=5)
    assert kinds(alerts) == [("latency_spike", "firing"), ("latency_spike", "resolved")]
    fired, resolved = alerts
    spike_start = 1000.0 + 600
    assert spike_start < fired.time <= spike_start + 30  # found within the short window
    assert spike_start + 120 < resolved.time <= spike_start + 120 + 60
    assert fired.value > fired.threshold == pytest.approx(3 * fired.baseline)
    assert "p95 latency" in fired.message and fired.route == "fraud" and fired.backend == "v1"
    assert detector.fired["latency_spike"] == 1 and detector.resolved["latency_spike"] == 1


def test_error_burst_fires() -> None:
    detector = AnomalyDetector()
    alerts = simulate(detector, [WARM, Phase(30, error_rate=0.30), Phase(120)], seed=6)
    assert kinds(alerts) == [("error_spike", "firing"), ("error_spike", "resolved")]
    fired = alerts[0]
    assert 1600 < fired.time <= 1610 and fired.value > fired.threshold > fired.baseline
    assert "error rate" in alerts[0].message and "vs baseline 1" in alerts[0].message


def test_shifted_label_mix_fires_drift() -> None:
    detector = AnomalyDetector()
    alerts = simulate(detector, [WARM, Phase(300, mix=SHIFTED)], seed=7)
    assert kinds(alerts) == [("drift", "firing")]  # ongoing: fired once, still open
    assert "label distribution PSI" in alerts[0].message and "a 80%->5" in alerts[0].message
    assert alerts[0].time - 1600 < 120
    assert [a.kind for a in detector.active()] == ["drift"]


def test_shifted_scores_fire_drift() -> None:
    detector = AnomalyDetector()
    alerts = simulate(detector, [WARM, Phase(300, scores=(5.0, 2.0))], seed=8)
    assert kinds(alerts) == [("drift", "firing")] and "score distribution" in alerts[0].message


def test_cooldown_prevents_repeats() -> None:
    detector = AnomalyDetector()
    spike, calm = Phase(60, median_s=0.25), Phase(90)
    alerts = simulate(detector, [WARM, spike, calm, spike, calm], seed=9)
    assert kinds(alerts) == [("latency_spike", "firing"), ("latency_spike", "resolved")]
    assert detector.suppressed["latency_spike"] == 1
    later = simulate(detector, [Phase(300), spike], seed=10, start=1000.0 + 900)
    assert kinds(later) == [("latency_spike", "firing")]


def test_lasting_shift_becomes_the_new_normal() -> None:
    config = AlertConfig(freeze_max_s=300, baseline_s=120)
    detector = AnomalyDetector(config)
    alerts = simulate(detector, [Phase(300, rate=20), Phase(1200, rate=20, median_s=0.25)], seed=11)
    assert kinds(alerts) == [("latency_spike", "firing"), ("latency_spike", "resolved")]


@pytest.mark.parametrize("bad", [
    Phase(600, rate=0.5, error_rate=1.0),
    Phase(600, rate=0.5, median_s=2.0),
    Phase(600, rate=1.0, mix=SHIFTED, scores=(5.0, 2.0)),
])
def test_small_sample_windows_never_alert(bad: Phase) -> None:
    detector = AnomalyDetector()
    quiet = Phase(200, rate=bad.rate)  # so that no window still holds the busy warm-up traffic
    assert simulate(detector, [WARM, quiet, bad], seed=12) == []


def test_no_baseline_no_alert() -> None:
    detector = AnomalyDetector()
    assert simulate(detector, [Phase(40, error_rate=0.5, median_s=1.0)], seed=13) == []


def test_idle_gap_and_forget() -> None:
    detector = AnomalyDetector()
    simulate(detector, [WARM], seed=14)
    assert simulate(detector, [WARM], seed=15, start=1000.0 + 600 + 86_400) == []  # a day without traffic
    detector.forget("fraud", "v1")
    assert detector.evaluate(1e6) == [] and detector.active() == []


def test_series_are_independent_and_history_is_bounded() -> None:
    detector = AnomalyDetector(AlertConfig(history=3))
    for backend in ("v1", "v2"):
        simulate(detector, [WARM], seed=16, backend=backend)
    spike = [Phase(60, median_s=0.25), Phase(90)]
    alerts = simulate(detector, spike, seed=17, start=1600.0, backend="v2")
    assert {a.backend for a in alerts} == {"v2"}
    simulate(detector, spike, seed=18, start=1000.0 + 1200, backend="v1")
    recent = detector.recent(10)
    assert len(recent) == 3 and recent[0].time >= recent[-1].time
    assert recent[0].to_json()["kind"] == "latency_spike"


@pytest.mark.parametrize(("k", "n", "p"), [(0, 10, 0.1), (3, 10, 0.1), (10, 10, 0.5), (5, 50, 0.01), (40, 100, 0.2),
                                           (11, 10, 0.5), (1, 10, 0.0), (0, 0, 0.3)])
def test_binomial_tail_is_exact(k: int, n: int, p: float) -> None:
    exact = sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(k, n + 1))
    assert binomial_sf(k, n, p) == pytest.approx(exact, rel=1e-9, abs=1e-300)


@pytest.mark.parametrize(("ref", "recent", "low", "high"), [
    ({"a": 800, "b": 150, "c": 50}, {"a": 800, "b": 150, "c": 50}, 0.0, 1e-12),
    ({"a": 80_000, "b": 15_000, "c": 5_000}, {"a": 50_000, "b": 30_000, "c": 20_000}, 0.44, 0.46),
    ({"a": 1000}, {"a": 900, "new": 100}, 0.25, 2.0),  # a new class appears: finite, large
])
def test_population_stability_index(ref: dict[str, float], recent: dict[str, float], low: float, high: float) -> None:
    assert low <= population_stability_index(ref, recent) <= high


@pytest.mark.parametrize("change", [{"bucket_s": 0}, {"window_s": 200}, {"latency_factor": 1.0},
                                    {"score_bins": (0.5, 0.2)}, {"alpha": 0.7}])
def test_config_is_checked(change: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        replace(AlertConfig(), **change)
