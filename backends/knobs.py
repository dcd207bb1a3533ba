"""Behaviour knobs that make a backend slow, failing, noisy or drifting on purpose.

`Knobs` is frozen and checks itself, so an update through `/-/control` builds a whole new
value or fails: a request with one bad field changes nothing. `apply` is what the knobs
do to one batch of predictions.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from backends.model import LABELS, Classifier, Floats, softmax

_FIELD = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}\Z")
_MAX_MS = 3_600_000.0
# Small enough never to matter to a consumer, large enough that an exact comparison sees it.
SCORE_NOISE = 1e-3


@dataclass(frozen=True)
class Knobs:
    """Runtime behaviour; `noise_field` None means no noise."""

    latency_ms: float = 0.0
    jitter_ms: float = 0.0
    error_rate: float = 0.0
    perturb: float = 0.0
    noise_field: str | None = None
    shift: float = 0.0
    stream_delay_ms: float = 0.0  # text: the gap between streamed tokens (time per output token)
    ttft_ms: float = 0.0  # text: a streamed answer's head goes out at once, its first token this much later
    reject_rate: float = 0.0  # text: share of requests answered 429 with Retry-After (overload)
    retry_after_s: float = 1.0
    judge_percent: float = 50.0  # judge mode: how often the favoured answer wins
    judge_garbage: float = 0.0  # judge mode: share of verdicts that are not A, B or TIE

    def __post_init__(self) -> None:
        for name in ("latency_ms", "jitter_ms", "stream_delay_ms", "ttft_ms"):
            _check_range(name, getattr(self, name), 0.0, _MAX_MS)
        for name in ("error_rate", "reject_rate", "judge_garbage"):
            _check_range(name, getattr(self, name), 0.0, 1.0)
        _check_range("retry_after_s", self.retry_after_s, 0.0, 3600.0)
        _check_range("judge_percent", self.judge_percent, 0.0, 100.0)
        _check_range("perturb", self.perturb, 0.0, 1000.0)
        _check_range("shift", self.shift, -1000.0, 1000.0)
        if self.noise_field is not None and not _FIELD.match(self.noise_field):
            raise ValueError(f"noise_field: {self.noise_field!r} is not a field name (letters, digits, _)")

    def to_json(self) -> dict[str, Any]:
        values = dataclasses.asdict(self)
        values["noise_field"] = self.noise_field or "none"
        return values


def _check_range(name: str, value: float, low: float, high: float) -> None:
    if not (math.isfinite(value) and low <= value <= high):
        raise ValueError(f"{name}: {value!r} is outside [{low:g}, {high:g}]")


def noise_field(value: str | None) -> str | None:
    """The CLI and the control API both spell "no noise" as "none"."""
    return None if value in (None, "", "none") else value


def updated(current: Knobs, raw: object) -> Knobs:
    """`current` with the fields of a JSON object replaced; ValueError names the bad field."""
    if not isinstance(raw, dict):
        raise ValueError("the body must be a JSON object of knobs")
    known = {f.name for f in dataclasses.fields(Knobs)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ValueError(f"unknown knob(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    changes: dict[str, Any] = {name: _typed(name, value) for name, value in raw.items()}
    return dataclasses.replace(current, **changes)


def _typed(name: str, value: object) -> float | str | None:
    if name == "noise_field":
        if value is not None and not isinstance(value, str):
            raise ValueError("noise_field: must be a string or null")
        return noise_field(value)
    # bool is an int subclass, but `true` as a latency is a mistake worth reporting.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name}: must be a number, got {type(value).__name__}")
    return float(value)


@dataclass(frozen=True)
class Prediction:
    """One batch of answers; `extra` is the random noise field, when one is asked for."""

    labels: list[str]
    scores: Floats
    extra: tuple[str, list[str]] | None = None


def apply(model: Classifier, x: Floats, knobs: Knobs, rng: np.random.Generator) -> Prediction:
    logits = model.logits(x)
    if knobs.perturb:
        logits = logits + rng.normal(0.0, knobs.perturb, logits.shape)
    if knobs.shift:
        logits[:, 0] += knobs.shift
    scores = softmax(logits)
    labels = [LABELS[i] for i in scores.argmax(axis=1)]
    return _add_noise(Prediction(labels, scores), knobs.noise_field, rng)


def _add_noise(pred: Prediction, field: str | None, rng: np.random.Generator) -> Prediction:
    n = len(pred.labels)
    if field is None:
        return pred
    if field == "scores":
        # Labels keep coming from the clean scores: only the named field may differ.
        return dataclasses.replace(pred, scores=pred.scores + rng.normal(0.0, SCORE_NOISE, pred.scores.shape))
    if field == "label":
        return dataclasses.replace(pred, labels=[LABELS[i] for i in rng.integers(0, len(LABELS), n)])
    return dataclasses.replace(pred, extra=(field, [rng.bytes(8).hex() for _ in range(n)]))
