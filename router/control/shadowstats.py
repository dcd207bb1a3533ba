"""What the router keeps about shadow comparisons, per route, and the report built from it.

Every figure is a counter or a fixed-bucket histogram, so the stats of several router processes
add up field by field; only the ring of recent disagreements is local. The agreement rate that
excludes noise is computed from counts of samples per set of mismatching fields, so fields found
to be noise after the fact can still be taken out.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict, deque
from statistics import NormalDist
from typing import Any, Final

from router.analysis.compare import InstanceCounts
from router.analysis.histogram import Histogram, SignedHistogram
from router.analysis.stats_tests import classify_field, wilson_interval

MAX_FIELDS = 200  # distinct field names tracked per route; beyond, counted under "(other)"
# Longer names are counted under "(other)" too: a backend that puts data in its output's keys
# would otherwise make metric labels and report keys of any size (20 KB keys: 7.6 MiB /metrics).
MAX_FIELD_NAME = 200
MAX_COMBOS = 256  # distinct sets of mismatching fields tracked; beyond, "(other)"
RECENT = 50
OTHER = "(other)"
# Why a live request was not mirrored, by index into ShadowStats.drops: counted on the request
# path, where a list slot costs a tenth of a dict of strings.
DROP_REASONS = ("body_too_large", "concurrency", "paced")
DROP_BODY_TOO_LARGE: Final = 0  # Final: compiled readers get the number, not a module lookup
DROP_CONCURRENCY: Final = 1
DROP_PACED: Final = 2


class ShadowStats:
    """Counters for one route's shadow traffic."""

    def __init__(self, primary: str, shadow_backend: str) -> None:
        self.key = (primary, shadow_backend)  # a YAML change of either starts the stats afresh
        self.started = time.time()
        self.mirrored = 0
        self.drops = [0] * len(DROP_REASONS)  # by DROP_REASONS index
        self.compared = 0
        self.last_compared_at: float | None = None  # wall time of the last comparison (stale figures show it)
        self.agreements = 0
        self.extraction_errors = 0
        self.extraction_reasons: defaultdict[str, int] = defaultdict(int)  # why, for the report and the log
        self.not_mirrored: defaultdict[str, int] = defaultdict(int)  # requests the shadow never saw: why
        self.instances = ClusteredRate()  # per instance (row) agreement, every field
        self.instance_labels = ClusteredRate()  # per instance, the predicted label
        self.skipped: defaultdict[str, int] = defaultdict(int)  # not compared: why
        self.live_errors = 0
        self.shadow_errors = 0
        self.shadow_error_kinds: defaultdict[str, int] = defaultdict(int)
        self.label_n = 0
        self.label_agree = 0
        self.text_n = 0
        self.text_similarity_sum = 0.0
        self.fields: dict[str, list[int]] = {}  # field -> [samples, mismatches]
        self.noise_fields: dict[str, list[int]] = {}
        self.noise_samples = 0
        self.mismatch_sets: defaultdict[frozenset[str], int] = defaultdict(int)
        self.live_latency = Histogram()
        self.shadow_latency = Histogram()
        self.paired_diff = SignedHistogram()  # shadow minus live, same request
        self.recent: deque[dict[str, Any]] = deque(maxlen=RECENT)
        self.latency_ewma = 0.0  # the shadow's typical latency, for pacing the copies
        self.next_send = 0.0
        self._noise: frozenset[str] = frozenset()
        self._noise_at = -1e9

    @property
    def dropped(self) -> dict[str, int]:
        """Live requests not mirrored, by reason (those that happened)."""
        return {reason: n for reason, n in zip(DROP_REASONS, self.drops, strict=True) if n}

    def add_dropped(self, reason: str, n: int) -> None:
        """`n` more of `reason` (another process's, summed): one of DROP_REASONS."""
        self.drops[DROP_REASONS.index(reason)] += n

    def extraction_error(self, reason: str) -> bool:
        """Count one; True when it should be logged: the first of each reason, then at 10, 100, ..."""
        self.extraction_errors += 1
        self.extraction_reasons[reason] += 1
        n = self.extraction_reasons[reason]
        return str(n).rstrip("0") == "1"

    def count_instances(self, counts: InstanceCounts) -> None:
        self.instances.add(counts.agree, counts.n)
        if counts.label_n:
            self.instance_labels.add(counts.label_agree, counts.label_n)

    def field_counts(self, table: dict[str, list[int]], fields: dict[str, bool]) -> None:
        for name, ok in _folded(table, fields).items():
            counts = table.setdefault(name, [0, 0])
            counts[0] += 1
            if not ok:
                counts[1] += 1

    def mismatch_set(self, fields: dict[str, bool]) -> None:
        key = frozenset(name if len(name) <= MAX_FIELD_NAME else OTHER for name, ok in fields.items() if not ok)
        if key not in self.mismatch_sets and len(self.mismatch_sets) >= MAX_COMBOS:
            key = frozenset({OTHER})
        self.mismatch_sets[key] += 1

    def noise_set(self) -> frozenset[str]:
        """Fields classified as noise, recomputed at most once a second (the tests are not free)."""
        now = time.monotonic()
        if now - self._noise_at >= 1.0:
            self._noise_at = now
            classes = self.noise_classes() if self.noise_samples else {}
            self._noise = frozenset(name for name, c in classes.items() if c == "noise")
        return self._noise

    def noise_classes(self, alpha: float = 0.01) -> dict[str, str]:
        out: dict[str, str] = {}
        for name, (n, k) in self.fields.items():
            noise_n, noise_k = self.noise_fields.get(name, (0, 0))
            out[name] = classify_field(k, n, noise_k, noise_n, alpha=alpha) if noise_n else "insufficient"
        return out

    def report(self, confidence: float = 0.95) -> dict[str, Any]:
        classes = self.noise_classes()
        noise = {name for name, c in classes.items() if c == "noise"}
        agree_wo_noise = sum(n for combo, n in self.mismatch_sets.items() if combo <= noise)
        live_p = {q: self.live_latency.quantile(q) for q in (0.5, 0.95, 0.99)}
        shadow_p = {q: self.shadow_latency.quantile(q) for q in (0.5, 0.95, 0.99)}
        return {
            "since": self.started,
            "mirrored": self.mirrored,
            "dropped": dict(self.dropped),
            "compared": self.compared,
            "last_compared_at": self.last_compared_at,
            "not_compared": dict(self.skipped),
            "extraction_errors": self.extraction_errors,
            "extraction_error_reasons": dict(self.extraction_reasons),
            "not_mirrored": dict(self.not_mirrored),
            "instance_agreement": self.instances.report(confidence),
            "instance_label_agreement": self.instance_labels.report(confidence),
            "agreement": _rate(agree_wo_noise, self.compared, confidence),
            "agreement_raw": _rate(self.agreements, self.compared, confidence),
            "label_agreement": _rate(self.label_agree, self.label_n, confidence) if self.label_n else None,
            "text_similarity_mean": self.text_similarity_sum / self.text_n if self.text_n else None,
            "fields": [
                {"field": name, "samples": n, "mismatches": k, "mismatch_rate": k / n if n else None,
                 "noise_samples": self.noise_fields.get(name, [0, 0])[0],
                 "noise_mismatches": self.noise_fields.get(name, [0, 0])[1],
                 "class": classes[name]}
                for name, (n, k) in sorted(self.fields.items())
            ],
            "noise_fields": sorted(noise),
            "noise_samples": self.noise_samples,
            "latency_seconds": {
                "live": {f"p{int(q * 100)}": v for q, v in live_p.items()},
                "shadow": {f"p{int(q * 100)}": v for q, v in shadow_p.items()},
                "ratio": {f"p{int(q * 100)}": _ratio(shadow_p[q], live_p[q]) for q in live_p},
                "paired_difference": {f"p{int(q * 100)}": self.paired_diff.quantile(q) for q in (0.5, 0.95, 0.99)},
                "pairs": self.paired_diff.total,
            },
            "errors": {
                "live": _rate(self.live_errors, self.mirrored, confidence),
                "shadow": _rate(self.shadow_errors, self.mirrored, confidence),
                "shadow_kinds": dict(self.shadow_error_kinds),
            },
        }


def _folded(table: dict[str, list[int]], fields: dict[str, bool]) -> dict[str, bool]:
    """One comparison's fields as `table` counts them: new names beyond MAX_FIELDS, and names over
    MAX_FIELD_NAME characters, become one "(other)" sample that matched only if all of them did."""
    out: dict[str, bool] = {}
    room = MAX_FIELDS - len(table)
    for name, ok in fields.items():
        if name not in table and name not in out:
            if len(name) > MAX_FIELD_NAME or room <= 0:
                out[OTHER] = out.get(OTHER, True) and ok
                continue
            room -= 1
        out[name] = ok
    return out


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _rate(k: int, n: int, confidence: float) -> dict[str, Any]:
    low, high = wilson_interval(k, n, confidence) if n else (None, None)
    return {"rate": k / n if n else None, "low": low, "high": high, "n": n, "k": k, "confidence": confidence}


class ClusteredRate:
    """A rate over instances (rows) that come in clusters (requests), with its interval.

    Rows of one request share a model call, so they are not independent: the interval is the
    ratio estimator's, with the request as the sampling unit (the usual cluster-robust variance),
    not a Wilson interval over rows, which would be too narrow. Sums only, so processes add up.
    """

    __slots__ = ("k", "kk", "kn", "m", "n", "nn")

    def __init__(self) -> None:
        self.m = 0  # requests
        self.n = self.k = 0  # instances, and those that agree
        self.kk = self.kn = self.nn = 0  # sums of squares and products, for the variance

    def add(self, k: int, n: int) -> None:
        self.m += 1
        self.n += n
        self.k += k
        self.kk += k * k
        self.kn += k * n
        self.nn += n * n

    def report(self, confidence: float) -> dict[str, Any] | None:
        if not self.n:
            return None
        p = self.k / self.n
        low = high = None
        if self.m > 1:
            spread = max(0.0, self.kk - 2 * p * self.kn + p * p * self.nn)
            se = math.sqrt(self.m / (self.m - 1) * spread) / self.n
            z = NormalDist().inv_cdf(0.5 + confidence / 2)
            low, high = max(0.0, p - z * se), min(1.0, p + z * se)
        return {"rate": p, "low": low, "high": high, "k": self.k, "n": self.n, "requests": self.m,
                "confidence": confidence, "unit": "request"}
