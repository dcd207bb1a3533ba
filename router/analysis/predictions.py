"""Reading the prediction out of a model's response, for feedback scoring and drift detection.

What a response holds is a label (a class), a score vector (scored by its argmax), or a value (a
regression). A route says which with `prediction:`; with `auto` (the default) it is inferred:

- strings and booleans are labels; a vector of numbers is a score vector;
- a non-integer number is a value;
- an integer is a label where the response shows it is a class (an output named like a label or
  class, or MLServer's `predict` beside `predict_proba`), otherwise it stays a `number` that the
  feedback decides: a `label` scores it as a class, a `value` as a regression;
- Open Inference V2 outputs are recognised by name: label/class/`predict` for labels,
  score/prob/logit (MLServer's `predict_proba`) for scores; a lone output is read whatever its name.

The first instance of a batch is read (the feedback join is per request). When nothing can be read
the prediction is kind `none` with a note saying why, which feedback then reports as unscorable.
"""

from __future__ import annotations

import json
import math
from typing import Any, NamedTuple

from router.observe.feedback import StoredKind

LABEL_KEYS = ("label", "class", "class_name", "predicted_label", "prediction")
SCORE_KEYS = ("scores", "probabilities", "probs", "score", "probability")
_HINT = "set the route's `prediction:` (label, scores or value)"


class Read(NamedTuple):
    """The prediction as stored for feedback, and what the drift detector watches."""

    prediction: str | float | None
    kind: StoredKind
    note: str | None = None
    label: str | None = None  # for label drift
    score: float | None = None  # the top score, or the value


def read_prediction(body: bytes, kind: str = "auto") -> Read:
    """The first prediction in a (decoded) response body; never raises."""
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return Read(None, "none", "the response is not JSON")
    if isinstance(doc, dict) and isinstance(doc.get("outputs"), list):
        return _from_v2(doc["outputs"], kind)
    if isinstance(doc, dict) and "predictions" in doc:
        preds = doc["predictions"]
    elif isinstance(doc, list):  # MLflow 1.x answered the bare list
        preds = doc
    else:
        keys = list(doc)[:5] if isinstance(doc, dict) else type(doc).__name__
        return _none(f"no 'predictions' or 'outputs' in the response ({keys})")
    first = preds[0] if isinstance(preds, list) and preds else preds
    return _item(first, kind, classifier=False)


def _none(why: str) -> Read:
    return Read(None, "none", f"{why}; {_HINT}")


def _item(item: object, kind: str, *, classifier: bool) -> Read:
    """One instance's prediction; `classifier`: the response shows integers are classes."""
    if isinstance(item, bool):
        return _label(str(item).lower())
    if isinstance(item, str):
        return _label(item) if kind != "value" else _none(f"the prediction {item[:50]!r} is not a number")
    if isinstance(item, int | float):
        return _number(item, kind, classifier)
    if isinstance(item, list) and len(item) == 1:
        return _item(item[0], kind, classifier=classifier)
    if isinstance(item, list) and item and all(_num(x) for x in item):
        return _scores(item) if kind != "value" else _none("the prediction is a vector, not a value")
    if isinstance(item, dict):
        return _mapping(item, kind)
    return _none(f"cannot read a prediction from {type(item).__name__}")


def _number(x: float, kind: str, classifier: bool) -> Read:
    if not math.isfinite(x):
        return _none("the prediction is not a finite number")
    if kind in ("label", "scores") or (kind == "auto" and classifier and float(x).is_integer()):
        return _label(_text(x))
    if kind == "auto" and isinstance(x, int):
        return Read(float(x), "number", None, None, float(x))
    return Read(float(x), "value", None, None, float(x))


def _label(text: str, score: float | None = None) -> Read:
    return Read(text, "label", None, text, score)


def _scores(values: list[Any]) -> Read:
    best = max(range(len(values)), key=lambda i: values[i])
    return _label(str(best), float(values[best]))


def _mapping(item: dict[str, Any], kind: str) -> Read:
    label = next((item[k] for k in LABEL_KEYS if isinstance(item.get(k), str | int) and
                  not isinstance(item.get(k), bool)), None)
    raw = next((item[k] for k in SCORE_KEYS if k in item), None)
    if label is not None:
        return _label(_text(label), _top(raw))
    if isinstance(raw, list) and raw and all(_num(x) for x in raw):
        return _scores(raw)
    return _none(f"no label or scores among the keys {list(item)[:5]}")


def _from_v2(outputs: list[Any], kind: str) -> Read:
    named = {str(o.get("name", "")): o for o in outputs if isinstance(o, dict) and isinstance(o.get("data"), list)}
    scores = next((o for n, o in named.items() if any(k in n.lower() for k in ("prob", "score", "logit"))), None)
    labels = next((o for n, o in named.items() if o is not scores and (
        any(k in n.lower() for k in ("label", "class")) or n == "predict")), None)
    if labels is None and scores is None and len(named) == 1:
        lone = next(iter(named.values()))
        return _row(lone, kind, classifier=False)
    if kind == "value" and labels is not None:
        return _row(labels, kind, classifier=False)
    if labels is not None and kind != "scores":
        name = str(labels.get("name", "")).lower()
        read = _row(labels, kind, classifier=scores is not None or "label" in name or "class" in name)
        return read._replace(score=_row(scores, "scores", classifier=True).score) if scores is not None else read
    if scores is not None:
        return _row(scores, "scores", classifier=True)
    return _none(f"outputs {sorted(named)[:5]} are not recognised as labels or scores")


def _row(output: dict[str, Any], kind: str, *, classifier: bool) -> Read:
    """The first row of a V2 output: `shape[1:]` values of its flat data."""
    data, shape = output["data"], output.get("shape")
    width = math.prod(shape[1:]) if isinstance(shape, list) and len(shape) > 1 and \
        all(isinstance(d, int) for d in shape) else 1
    row = data[:width] if width > 1 else (data[0] if data else None)
    if isinstance(row, list) and row and isinstance(row[0], list):
        row = row[0]  # data sent nested
    if kind == "scores" and isinstance(row, list) and row and all(_num(x) for x in row):
        return _scores(row)
    return _item(row, kind, classifier=classifier)


def _num(x: object) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


def _top(value: object) -> float | None:
    if _num(value):
        return float(value)  # type: ignore[arg-type]
    if isinstance(value, list) and value and all(_num(x) for x in value):
        return float(max(value))
    return None


def _text(x: object) -> str:
    """One spelling per class: 1, 1.0 and "1" are the same class."""
    if isinstance(x, float) and x.is_integer():
        return str(int(x))
    return x if isinstance(x, str) else str(x)
