"""Agreement per instance (row of a batch), beside the per-request verdict of `router.analysis.compare`.

A request of 10 rows whose 10th row differs is one disagreeing request but 9 agreeing instances.
Both are counted: the request stays the statistical unit (rows of one request share a model call
and an input batch, so they are not independent; intervals over instances treat each request as a
cluster), while the instance rate says how often a row's answer changes.

Where the batch lives, per format: `predictions[i]` (KServe V1, MLflow, TF Serving), row i of every
output (Open Inference V2: outputs share their first dimension), `choices[i]` (OpenAI), and a
top-level list for `json`. A response without such a batch has no instance counts.
"""

from __future__ import annotations

from collections.abc import Mapping

from router.analysis.compare import (
    MAX_DECODED,
    CompareSpec,
    Comparison,
    InstanceCounts,
    _Pair,
    _root_pairs,
    _Tally,
    _walk,
    compare_documents,
    read_pair,
)
from router.analysis.extract import MISSING
from router.analysis.jsonpath import Location, field_name

# The position in a location that holds the instance index.
_INDEX_AT: Mapping[str, int] = {"kserve-v1": 1, "mlflow": 1, "tfserving": 1, "openai": 1,
                                "open-inference-v2": 2, "json": 0}


def compare_instances(live: bytes, shadow: bytes, spec: CompareSpec, content_type: str = "application/json",
                      shadow_content_type: str | None = None, *, live_encoding: str | None = None,
                      shadow_encoding: str | None = None, max_decoded: int = MAX_DECODED) -> Comparison:
    """`router.analysis.compare.compare`, with `instances` filled in where the response is a batch."""
    docs = read_pair(live, shadow, spec, content_type, shadow_content_type, live_encoding=live_encoding,
                     shadow_encoding=shadow_encoding, max_decoded=max_decoded)
    if isinstance(docs, Comparison):
        return docs
    return compare_documents(spec, docs[0], docs[1], count_instances)


def count_instances(spec: CompareSpec, live: object, shadow: object) -> InstanceCounts | None:
    """Per-instance counts, or None when the documents hold no batch to split."""
    depth = _INDEX_AT[spec.format] + 1
    tally = _Tally(spec, spec.max_values)
    pairs = _expand_to(tally, _root_pairs(tally, live, shadow), depth)
    if not pairs:
        return None
    groups: dict[int, list[_Pair]] = {}
    for pair in pairs:
        index = pair.location[depth - 1]
        if not isinstance(index, int):
            return None  # an object, not a batch, at that depth (TF Serving's columnar outputs)
        groups.setdefault(index, []).append(pair)
    n = agree = label_n = label_agree = one_sided = 0
    budget = spec.max_values
    for index in sorted(groups):
        if any(p.live is MISSING or p.shadow is MISSING for p in groups[index]):
            n += 1
            one_sided += 1
            continue
        one = _Tally(spec, budget)
        _walk(one, groups[index])
        budget = one.budget
        if one.truncated:
            break  # the value budget ran out: count only whole instances
        result = one.result()
        n += 1
        agree += result.agree
        if result.label_agree is not None:
            label_n += 1
            label_agree += result.label_agree
    if label_n:  # rows with labels, one of them missing on one side: its label disagrees too
        label_n += one_sided
    return InstanceCounts(n, agree, label_n, label_agree) if n else None


def _expand_to(t: _Tally, pairs: list[_Pair], depth: int) -> list[_Pair] | None:
    """The pairs at `depth`, descending through objects and lists side by side; None when the
    two sides differ in shape above it (nothing to split)."""
    out: list[_Pair] = []
    stack = pairs[::-1]
    while stack:
        p = stack.pop()
        if len(p.location) >= depth:
            out.append(p)
            continue
        children = _children(p)
        if children is None:
            return None
        stack.extend(reversed(children))
    return out


def _children(p: _Pair) -> list[_Pair] | None:
    live, shadow = p.live, p.shadow
    if isinstance(live, dict) and isinstance(shadow, dict):
        keys = [*live, *(k for k in shadow if k not in live)]
        return [_child(p, k, live.get(k, MISSING), shadow.get(k, MISSING)) for k in keys]
    if isinstance(live, list) and isinstance(shadow, list):
        # A row on one side only is an instance that disagrees.
        return [_child(p, i, live[i] if i < len(live) else MISSING, shadow[i] if i < len(shadow) else MISSING)
                for i in range(max(len(live), len(shadow)))]
    return None


def _child(p: _Pair, part: str | int, live: object, shadow: object) -> _Pair:
    location: Location = (*p.location, part)
    return _Pair(location, field_name(location), part if isinstance(part, str) else p.key, live, shadow)
