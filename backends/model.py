"""A small but real classifier: softmax regression with 3 classes over 4 features.

The base weights come from a fixed seed that does not depend on the version, so every
version is the same model. Any version other than "v1" adds a small fixed weight delta,
which makes it a believable retrained candidate: on 200,000 standard-normal inputs v1 and
v2 pick the same label for 96.98% of them (`agreement(load("v1"), load("v2"))`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

N_FEATURES = 4
LABELS = ("legit", "review", "fraud")
BASE_SEED = 20240611
DELTA_SEED = 20240612
# Tuned so that v1 and v2 disagree on about 3% of inputs: enough to show up in a shadow
# comparison, small enough that v2 is still a plausible candidate.
DELTA_SCALE = 0.05

Floats = NDArray[np.float64]


@dataclass(frozen=True)
class Classifier:
    """Softmax regression: `logits = x @ weights + bias`, one row per instance."""

    version: str
    weights: Floats
    bias: Floats

    def logits(self, x: Floats) -> Floats:
        result: Floats = x @ self.weights + self.bias
        return result

    def predict(self, x: Floats) -> Floats:
        """Class probabilities, shape (n, 3)."""
        return softmax(self.logits(x))


def load(version: str) -> Classifier:
    rng = np.random.default_rng(BASE_SEED)
    weights = rng.normal(0.0, 1.0, (N_FEATURES, len(LABELS)))
    bias = rng.normal(0.0, 0.3, len(LABELS))
    if version != "v1":
        weights = weights + DELTA_SCALE * np.random.default_rng(DELTA_SEED).normal(0.0, 1.0, weights.shape)
    return Classifier(version, weights, bias)


def softmax(logits: Floats) -> Floats:
    # Subtracting the row maximum keeps exp() from overflowing on large logits.
    z = np.exp(logits - logits.max(axis=1, keepdims=True))
    result: Floats = z / z.sum(axis=1, keepdims=True)
    return result


def labels_of(probs: Floats) -> list[str]:
    return [LABELS[i] for i in probs.argmax(axis=1)]


def agreement(a: Classifier, b: Classifier, n: int = 200_000, seed: int = 7) -> float:
    """Share of standard-normal inputs on which `a` and `b` pick the same label."""
    x = np.random.default_rng(seed).normal(size=(n, N_FEATURES))
    return float((a.logits(x).argmax(axis=1) == b.logits(x).argmax(axis=1)).mean())
