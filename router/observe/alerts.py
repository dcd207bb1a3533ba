"""Anomaly alerts per (route, backend): latency and error-rate spikes, and drift of the outputs.

API (each alert is logged here; the lead counts, lists and posts them to `notify`):

- `AlertConfig(...)`: frozen thresholds; the defaults stay silent on steady traffic (see below).
- `AnomalyDetector(config)`: `observe(backend, route, latency_s, error, label, score, now)` per
  finished request (O(1): it only counts into the current time bucket); `evaluate(now) ->
  list[Alert]` every second or so returns what started ("firing") or ended ("resolved") since the
  last call; `active()`, `recent(limit)` (newest first, bounded); `forget(route, backend)` when a
  backend leaves the config; `fired`, `resolved`, `suppressed` counters per kind. `now` is any
  one clock, and `Alert.time` is on it: pass `time.time()` so alerts carry wall time (a clock step
  costs at most a few buckets: backwards is ignored, forwards closes at most one drift window).
  The detector never reads the time itself, so tests are deterministic.

How it decides. Requests are counted into `bucket_s` buckets; the last `window_s` of closed buckets
form the short window, kept as running sums. A bucket leaving the short window feeds the moving
baseline (exponentially decayed, time constant `baseline_s`), so a spike is judged before it can
leak into its own baseline; the baseline is frozen while its alert is open (for at most
`freeze_max_s`, after which a lasting shift becomes the new normal). Likewise buckets leaving the
`drift_window_s` window feed the drift reference (time constant `reference_s`).

- latency_spike: short-window p95 of successful requests > `latency_factor` x baseline p95 (and
  at least `latency_min_increase_s` above it), and requests beyond that threshold significantly
  more common than in the baseline (one-sided exact binomial test, p < `alpha`).
- error_spike: short-window error rate > baseline + `error_floor`, at least `min_errors` errors,
  and the one-sided exact binomial test against the baseline rate gives p < `alpha`.
- drift: population stability index of the recent label mix (top `max_labels`) or score
  histogram (`score_bins`) against the reference > `psi_threshold`.

No verdict without `min_samples` in the short window (`drift_min_samples` for drift) and
`min_baseline_samples` behind the baseline. An alert resolves when its figure falls below
baseline + `resolve_fraction` x (threshold - baseline), so it does not flap at the edge; after it
fires, the same (route, backend, kind) stays quiet for `cooldown_s` (counted in `suppressed`).

Why the defaults hold on steady traffic: at 50 req/s the short window has ~1500 samples, whose p95
sits within a few percent of the baseline's (the histogram's 20% buckets are the same on both
sides), far from 3x; 1% errors give ~15 of 1500, while firing needs 6%, over 90; PSI between two
samples of one distribution is about (categories - 1) x (1/n1 + 1/n2), under 0.05 for 10 bins and
300 samples, against 0.25. `min_errors` guards small windows: the test is repeated every bucket
on overlapping windows, and without it 5 errors in 60 requests (p ~ 1e-4 at a 1% baseline) fired
about twice in ten simulated hours at 2 req/s.
"""

from __future__ import annotations

import itertools
import logging
import math
from bisect import bisect_left
from collections import Counter, deque
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Final, Literal

from router.analysis.histogram import ALERT_BOUNDS, ALERT_STEP, layout_index

log = logging.getLogger("router.observe.alerts")

AlertKind = Literal["latency_spike", "error_spike", "drift"]
KINDS: tuple[AlertKind, ...] = ("latency_spike", "error_spike", "drift")
LATENCY_BOUNDS = ALERT_BOUNDS  # ~19% steps of the router's one latency scheme
OTHER: Final = "(other)"


@dataclass(frozen=True, slots=True)
class AlertConfig:
    """Anomaly thresholds; durations in seconds."""

    bucket_s: float = 5.0
    window_s: float = 30.0
    baseline_s: float = 600.0
    min_samples: int = 50
    min_baseline_samples: int = 500
    latency_quantile: float = 0.95
    latency_factor: float = 3.0
    latency_min_increase_s: float = 0.005
    alpha: float = 0.001
    error_floor: float = 0.05
    min_errors: int = 10
    drift_window_s: float = 120.0
    reference_s: float = 3600.0
    drift_min_samples: int = 300
    psi_threshold: float = 0.25
    score_bins: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
    max_labels: int = 20
    cooldown_s: float = 300.0
    resolve_fraction: float = 0.5
    freeze_max_s: float = 900.0
    history: int = 200

    def __post_init__(self) -> None:
        if self.bucket_s <= 0 or self.window_s < self.bucket_s or self.drift_window_s < self.window_s:
            raise ValueError("need 0 < bucket_s <= window_s <= drift_window_s")
        if not 0 < self.latency_quantile < 1 or not 0 < self.alpha < 0.5 or not 0 <= self.resolve_fraction < 1:
            raise ValueError("latency_quantile in (0, 1), alpha in (0, 0.5), resolve_fraction in [0, 1)")
        if self.latency_factor <= 1 or self.psi_threshold <= 0 or not 0 < self.error_floor < 1:
            raise ValueError("latency_factor must exceed 1, psi_threshold be > 0, error_floor lie in (0, 1)")
        if list(self.score_bins) != sorted(set(self.score_bins)):
            raise ValueError("score_bins must be strictly increasing")

    @property
    def short_buckets(self) -> int:
        return max(1, round(self.window_s / self.bucket_s))

    @property
    def drift_buckets(self) -> int:
        return max(self.short_buckets, round(self.drift_window_s / self.bucket_s))


@dataclass(frozen=True, slots=True)
class Alert:
    """An anomaly starting ("firing") or ending ("resolved"), with the figures it was judged on."""

    time: float
    route: str
    backend: str
    kind: AlertKind
    state: Literal["firing", "resolved"]
    severity: Literal["info", "warning", "critical"]
    message: str
    value: float
    baseline: float
    threshold: float

    def to_json(self) -> dict[str, object]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True, slots=True)
class _Verdict:
    value: float
    baseline: float
    threshold: float
    critical: float  # value above which the alert is critical
    message: str
    significant: bool = True  # the binomial test agrees that the change is real

    def anomalous(self) -> bool:
        return self.significant and self.value > self.threshold

    def recovered(self, fraction: float) -> bool:
        return self.value <= self.baseline + fraction * (self.threshold - self.baseline)


class _Bucket:
    __slots__ = ("errors", "labels", "latency", "n", "scores")

    def __init__(self, n_scores: int) -> None:
        self.n = self.errors = 0
        self.latency = [0] * (len(LATENCY_BOUNDS) + 1)
        self.labels: dict[str, int] = {}
        self.scores = [0] * n_scores


class _Series:
    """One (route, backend): the open bucket, the windows' running sums, baselines and episodes."""

    def __init__(self, cfg: AlertConfig, now: float) -> None:
        self.cfg = cfg
        self.index = math.floor(now / cfg.bucket_s)
        self.current = _Bucket(len(cfg.score_bins) + 1)
        self.closed: deque[_Bucket] = deque()
        self.short = _Bucket(len(cfg.score_bins) + 1)  # sums over the short window (n, errors, latency)
        self.recent = _Bucket(len(cfg.score_bins) + 1)  # sums over the drift window (labels, scores)
        self.base_latency = [0.0] * (len(LATENCY_BOUNDS) + 1)
        self.base_n = self.base_errors = 0.0
        self.ref_labels: dict[str, float] = {}
        self.ref_scores = [0.0] * (len(cfg.score_bins) + 1)
        self.known: set[str] = set()
        self.episodes: dict[AlertKind, tuple[float, Alert | None]] = {}  # started, the alert (None: suppressed)
        self.last_fired: dict[AlertKind, float] = {}
        self.dirty = False

    def advance(self, now: float) -> None:
        target = math.floor(now / self.cfg.bucket_s)
        # Past a full drift window, more empty buckets change nothing but the decay: skip them.
        for _ in range(min(target - self.index, self.cfg.drift_buckets + 1)):
            self._close(now)
        self.index = max(self.index, target)

    def _close(self, now: float) -> None:
        b, self.current = self.current, _Bucket(len(self.cfg.score_bins) + 1)
        self.closed.append(b)
        self.dirty = True
        _add(self.short, b, 1, latency=True)
        _add(self.recent, b, 1, latency=False)
        if len(self.closed) > self.cfg.short_buckets:
            leaving = self.closed[-self.cfg.short_buckets - 1]
            _add(self.short, leaving, -1, latency=True)
            self._learn_baseline(leaving, now)
        if len(self.closed) > self.cfg.drift_buckets:
            old = self.closed.popleft()
            _add(self.recent, old, -1, latency=False)
            self._learn_reference(old, now)

    def frozen(self, kind: AlertKind, now: float) -> bool:
        episode = self.episodes.get(kind)
        return episode is not None and now - episode[0] < self.cfg.freeze_max_s

    def _learn_baseline(self, b: _Bucket, now: float) -> None:
        d = math.exp(-self.cfg.bucket_s / self.cfg.baseline_s)
        if not self.frozen("latency_spike", now):
            self.base_latency = [x * d + c for x, c in zip(self.base_latency, b.latency, strict=True)]
        if not self.frozen("error_spike", now):
            self.base_n, self.base_errors = self.base_n * d + b.n, self.base_errors * d + b.errors

    def _learn_reference(self, b: _Bucket, now: float) -> None:
        if self.frozen("drift", now):
            return
        d = math.exp(-self.cfg.bucket_s / self.cfg.reference_s)
        for k in self.ref_labels.keys() | b.labels.keys():
            self.ref_labels[k] = self.ref_labels.get(k, 0.0) * d + b.labels.get(k, 0)
        self.ref_scores = [x * d + c for x, c in zip(self.ref_scores, b.scores, strict=True)]


def _add(total: _Bucket, b: _Bucket, sign: int, *, latency: bool) -> None:
    if latency:
        total.n += sign * b.n
        total.errors += sign * b.errors
        for i, c in enumerate(b.latency):
            if c:
                total.latency[i] += sign * c
    else:
        for k, c in b.labels.items():
            total.labels[k] = total.labels.get(k, 0) + sign * c
        for i, c in enumerate(b.scores):
            total.scores[i] += sign * c


class AnomalyDetector:
    """Counts requests per (route, backend) and turns sudden changes into alerts."""

    def __init__(self, config: AlertConfig | None = None) -> None:
        self.config = config or AlertConfig()
        self._series: dict[tuple[str, str], _Series] = {}
        self._recent: deque[Alert] = deque(maxlen=self.config.history)
        self.fired: Counter[AlertKind] = Counter()
        self.resolved: Counter[AlertKind] = Counter()
        self.suppressed: Counter[AlertKind] = Counter()
        edges = self.config.score_bins
        self._bin_names = [f"<{edges[0]:g}", *(f"{a:g}-{b:g}" for a, b in itertools.pairwise(edges)),
                           f">={edges[-1]:g}"] if edges else ["all"]

    def observe(self, backend: str, route: str, latency_s: float, error: bool, label: str | None,
                score: float | None, now: float) -> None:
        s = self._series.get((route, backend))
        if s is None:
            s = self._series[(route, backend)] = _Series(self.config, now)
        elif now >= (s.index + 1) * self.config.bucket_s:
            s.advance(now)
        b = s.current
        b.n += 1
        if error:
            b.errors += 1  # a failure's latency says nothing about the model's speed: not counted
        else:
            b.latency[layout_index(ALERT_STEP, latency_s)] += 1
        if label is not None:
            if label not in s.known:
                if len(s.known) >= self.config.max_labels:
                    label = OTHER
                else:
                    s.known.add(label)
            b.labels[label] = b.labels.get(label, 0) + 1
        if score is not None and math.isfinite(score):
            b.scores[bisect_left(self.config.score_bins, score)] += 1

    def evaluate(self, now: float) -> list[Alert]:
        out: list[Alert] = []
        for (route, backend), s in self._series.items():
            s.advance(now)
            if not s.dirty:  # figures change only when a bucket closes
                continue
            s.dirty = False
            verdicts: tuple[tuple[AlertKind, _Verdict | None], ...] = (
                ("latency_spike", self._latency(s)), ("error_spike", self._errors(s)), ("drift", self._drift(s)))
            for kind, verdict in verdicts:
                alert = self._judge(s, route, backend, kind, verdict, now)
                if alert is not None:
                    out.append(alert)
        for alert in out:
            self._recent.append(alert)
            (self.fired if alert.state == "firing" else self.resolved)[alert.kind] += 1
            log.log(logging.WARNING if alert.state == "firing" else logging.INFO, "alert %s %s %s/%s: %s",
                    alert.kind, alert.state, alert.route, alert.backend, alert.message)
        return out

    def active(self) -> list[Alert]:
        return [a for s in self._series.values() for _, a in s.episodes.values() if a is not None]

    def recent(self, limit: int = 50) -> list[Alert]:
        return list(self._recent)[::-1][:limit]

    def forget(self, route: str, backend: str) -> None:
        self._series.pop((route, backend), None)

    def _judge(self, s: _Series, route: str, backend: str, kind: AlertKind, v: _Verdict | None,
               now: float) -> Alert | None:
        if v is None:
            return None  # too few samples: neither raise nor resolve
        cfg = self.config
        episode = s.episodes.get(kind)
        if episode is not None and v.recovered(cfg.resolve_fraction):
            del s.episodes[kind]
            if episode[1] is None:
                return None
            return Alert(now, route, backend, kind, "resolved", "info", f"{kind} resolved: {v.message}",
                         v.value, v.baseline, v.threshold)
        if (episode is not None and episode[1] is not None) or not v.anomalous():
            return None
        if now - s.last_fired.get(kind, -math.inf) < cfg.cooldown_s:
            if episode is None:
                self.suppressed[kind] += 1
                s.episodes[kind] = (now, None)
            return None
        severity: Literal["warning", "critical"] = "critical" if v.value > v.critical else "warning"
        alert = Alert(now, route, backend, kind, "firing", severity, v.message, v.value, v.baseline, v.threshold)
        s.episodes[kind] = (episode[0] if episode else now, alert)
        s.last_fired[kind] = now
        return alert

    def _latency(self, s: _Series) -> _Verdict | None:
        cfg, lat = self.config, s.short.latency
        n, base_n = sum(lat), sum(s.base_latency)
        if n < cfg.min_samples or base_n < cfg.min_baseline_samples:
            return None
        q = cfg.latency_quantile
        value, base = _quantile(lat, q), _quantile(s.base_latency, q)
        threshold = max(base * cfg.latency_factor, base + cfg.latency_min_increase_s)
        # A p95 from 50 samples is the third largest: with a heavy tail it passes 3x by chance. So
        # also ask that requests beyond the threshold be significantly more common than before.
        j = bisect_left(LATENCY_BOUNDS, threshold) + 1
        p_value = 1.0
        if value > threshold:
            p_value = binomial_sf(sum(lat[j:]), n, (sum(s.base_latency[j:]) + 0.5) / (base_n + 1))
        message = (f"p{q * 100:g} latency {value:.4g} s over the last {cfg.window_s:g} s (n={n}) is "
                   f"{value / base:.2g}x the baseline {base:.4g} s; threshold {threshold:.4g} s, p={p_value:.2g}")
        return _Verdict(value, base, threshold, base + 2 * (threshold - base), message, p_value < cfg.alpha)

    def _errors(self, s: _Series) -> _Verdict | None:
        cfg, n, k = self.config, s.short.n, s.short.errors
        if n < cfg.min_samples or s.base_n < cfg.min_baseline_samples:
            return None
        p0 = (s.base_errors + 0.5) / (s.base_n + 1)  # never exactly 0: one error is not infinitely unlikely
        rate, threshold = k / n, p0 + cfg.error_floor
        p_value = binomial_sf(k, n, p0) if rate > threshold else 1.0
        message = (f"error rate {rate:.1%} over the last {cfg.window_s:g} s ({k}/{n}) vs baseline {p0:.2%}; "
                   f"threshold {threshold:.1%}, p={p_value:.2g}")
        significant = p_value < cfg.alpha and k >= cfg.min_errors
        return _Verdict(rate, p0, threshold, p0 + 4 * cfg.error_floor, message, significant)

    def _drift(self, s: _Series) -> _Verdict | None:
        cfg, found = self.config, []
        names = self._bin_names
        for name, recent, ref in (("label", s.recent.labels, s.ref_labels),
                                  ("score", dict(zip(names, s.recent.scores, strict=True)),
                                   dict(zip(names, s.ref_scores, strict=True)))):
            n_recent, n_ref = sum(recent.values()), sum(ref.values())
            if n_recent >= cfg.drift_min_samples and n_ref >= cfg.drift_min_samples:
                psi = population_stability_index(ref, recent)
                found.append((psi, f"{name} distribution PSI {psi:.3f} over the last {cfg.drift_window_s:g} s "
                                   f"(n={n_recent}) vs the reference (n~{n_ref:.0f}): {_shift(ref, recent)}; "
                                   f"threshold {cfg.psi_threshold:g}"))
        if not found:
            return None
        psi, message = max(found, key=lambda f: f[0])
        return _Verdict(psi, 0.0, cfg.psi_threshold, 2 * cfg.psi_threshold, message)


def _quantile(counts: list[int] | list[float], q: float) -> float:
    """The upper bound of the bucket holding the q-quantile (the last bound for +Inf)."""
    rank, seen = q * sum(counts), 0.0
    for i, c in enumerate(counts):
        seen += c
        if seen >= rank and c:
            return LATENCY_BOUNDS[min(i, len(LATENCY_BOUNDS) - 1)]
    return LATENCY_BOUNDS[-1]


def binomial_sf(k: int, n: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p), summed from the k-th term up; fast when k is above the mean."""
    if k <= 0 or p >= 1:
        return 1.0
    if k > n or p <= 0:
        return 0.0
    log_term = math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1) + k * math.log(p) + \
        (n - k) * math.log1p(-p)
    term = total = math.exp(log_term)
    for i in range(k, n):
        term *= (n - i) / (i + 1) * p / (1 - p)
        total += term
        if term <= total * 1e-15 and i > n * p:
            break
    return min(1.0, total)


def population_stability_index(reference: Mapping[str, float], recent: Mapping[str, float],
                               smoothing: float = 0.5) -> float:
    """PSI = sum (r - e) ln(r / e) over categories; `smoothing` is added to every count, so an empty
    category is finite and small samples are not made to look drifted."""
    keys = reference.keys() | recent.keys()
    n_ref = sum(reference.values()) + smoothing * len(keys)
    n_recent = sum(recent.values()) + smoothing * len(keys)
    total = 0.0
    for k in keys:
        e = (reference.get(k, 0.0) + smoothing) / n_ref
        r = (recent.get(k, 0.0) + smoothing) / n_recent
        total += (r - e) * math.log(r / e)
    return total


def _shift(reference: Mapping[str, float], recent: Mapping[str, float], top: int = 4) -> str:
    """The categories that moved most, as "cat 80%->50%"."""
    n_ref, n_recent = sum(reference.values()) or 1.0, sum(recent.values()) or 1.0
    moves = [(k, reference.get(k, 0.0) / n_ref, recent.get(k, 0.0) / n_recent)
             for k in reference.keys() | recent.keys()]
    moves.sort(key=lambda m: -abs(m[2] - m[1]))
    return ", ".join(f"{k} {a:.0%}->{b:.0%}" for k, a, b in moves[:top])
