"""Comparing a shadow model's outputs with the live model's: extraction per protocol, then field by field.

Pure: bytes in, a frozen `Comparison` out. `CompareSpec.build` parses the config once (format,
JSONPaths, tolerances), so each sample only parses two bodies and walks them side by side.

Extraction turns a body into a canonical document that keeps the protocol's own key names, so that
`paths` and `ignore` read like paths into the response:

- kserve-v1, mlflow: `{"predictions": ...}` (an MLflow 1.x bare list or object goes under
  `predictions`); tfserving: `{"predictions": ...}` or, columnar, `{"outputs": ...}`.
- open-inference-v2: `{"outputs": {name: data reshaped by shape}}`. Only the data is kept (`id`,
  `model_version`, `datatype` and `parameters` are dropped), so an output is `$.outputs.probs`.
- openai: `{"choices": [{"message": {"content": ...}}]}` for chat, streamed or not, and
  `{"choices": [{"text": ...}]}` for completions, in `index` order.
- json: the document itself.

A field is a location with list indices generalised to `[*]` (`$.predictions[*].scores[*]`), so the
set of fields follows the schema, not the batch size. Every node compared contributes its field,
and a field matches when every node under that name matched: a leaf when its values match, a list
when both sides are lists of the same length, an object when both sides are objects. A key present
on one side only fails that key's field; a type difference fails the field where it occurs.

Labels, summarised in `label_agree`: the argmax of probability vectors, leaves under a key that
names a label or class, and strings in the model-server formats (their strings are class names).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final, Literal, NamedTuple, TypeGuard, TypeVar, cast, get_args

from router.analysis.decoding import DecodeError, decode
from router.analysis.extract import (
    FORMATS,
    MISSING,
    ExtractionError,
    Format,
    _kind,
    extract,
)
from router.analysis.jsonpath import ANY, JsonPath, Location, Segment, _key_segment, field_name, parse_path

# "fields": every compared field within tolerance; "labels": the predicted classes are the same
# (argmax of probability vectors, or the label output), whatever the probabilities' digits.
Agree = Literal["fields", "labels"]
AGREE: tuple[str, ...] = get_args(Agree)
MAX_VALUES = 10_000
MAX_DECODED = 1024 * 1024
DECODED_TOO_LARGE = "decoded_too_large"  # a compressed body beyond the cap: skipped, not an error
# Text similarity costs O(tokens^2 / 64): 4,000 characters (at most 2,000 tokens) stays near 1 ms.
TEXT_LIMIT = 4_000


# ---- the spec and the result -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CompareSpec:
    """What to compare and how closely; built once from config with `build`."""

    format: Format
    paths: tuple[JsonPath, ...]  # empty: the whole canonical document
    ignore: tuple[JsonPath, ...]
    abs_tol: float
    rel_tol: float
    max_values: int = MAX_VALUES
    agree: Agree = "fields"  # what "agree" means for the rollout gate

    @classmethod
    def build(cls, format: str = "json", paths: Sequence[str] = (), ignore: Sequence[str] = (),
              abs_tol: object = 1e-6, rel_tol: object = 1e-3, max_values: object = MAX_VALUES,
              agree: str = "fields") -> CompareSpec:
        """Validate config values; raises ValueError naming the bad value (`paths[1]: bad path ...`).

        The numbers are `object`: they come from YAML, and compiled code would turn a `True` passed
        as a float into 1.0 before the check could refuse it."""
        if format not in FORMATS:
            raise ValueError(f"unknown format {format!r}; expected one of {', '.join(FORMATS)}")
        if agree not in AGREE:
            raise ValueError(f"agree: expected one of {', '.join(AGREE)}, got {agree!r}")
        for name, tol in (("abs_tol", abs_tol), ("rel_tol", rel_tol)):
            if isinstance(tol, bool) or not isinstance(tol, int | float) or not 0 <= tol < math.inf:
                raise ValueError(f"{name}: expected a finite number >= 0, got {tol!r}")
        if isinstance(max_values, bool) or not isinstance(max_values, int) or max_values < 1:
            raise ValueError(f"max_values: expected an integer >= 1, got {max_values!r}")
        return cls(cast(Format, format), _parse_paths("paths", paths), _parse_paths("ignore", ignore),
                   float(cast(float, abs_tol)), float(cast(float, rel_tol)), max_values, cast(Agree, agree))


def _parse_paths(name: str, texts: Sequence[str]) -> tuple[JsonPath, ...]:
    if not isinstance(texts, list | tuple):
        raise ValueError(f"{name}: expected a list of paths, got {texts!r}")
    parsed = []
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise ValueError(f"{name}[{i}]: expected a path string, got {text!r}")
        try:
            parsed.append(parse_path(text))
        except ValueError as exc:
            raise ValueError(f"{name}[{i}]: {exc}") from None
    return tuple(parsed)


class InstanceCounts(NamedTuple):
    """Per-instance (row) agreement of one pair: of `n` instances, `agree` matched in every field;
    of `label_n` with a label, `label_agree` had the same one. An instance on one side only counts
    as disagreeing."""

    n: int
    agree: int
    label_n: int
    label_agree: int


@dataclass(frozen=True, slots=True)
class Comparison:
    """The verdict on one live/shadow pair.

    When `error` is set nothing was compared (a body was not valid for the format): count it as an
    extraction error, never as a disagreement. `truncated` means the value budget ran out; `agree`
    and `fields` then cover only what was compared.
    """

    agree: bool
    fields: Mapping[str, bool]
    label_agree: bool | None = None
    text_similarity: float | None = None
    error: str | None = None
    truncated: bool = False
    error_reason: str | None = None  # one of EXTRACTION_REASONS, or DECODED_TOO_LARGE
    instances: InstanceCounts | None = None


def compare(live: bytes, shadow: bytes, spec: CompareSpec, content_type: str = "application/json",
            shadow_content_type: str | None = None, *, live_encoding: str | None = None,
            shadow_encoding: str | None = None, max_decoded: int = MAX_DECODED) -> Comparison:
    """Compare the live (primary) response with the shadow's. Never raises on bad bodies.

    Compressed bodies (`*_encoding`: the Content-Encoding header) are decoded first, up to
    `max_decoded` bytes each; beyond, the pair is not compared (`error_reason` DECODED_TOO_LARGE).
    """
    docs = read_pair(live, shadow, spec, content_type, shadow_content_type, live_encoding=live_encoding,
                     shadow_encoding=shadow_encoding, max_decoded=max_decoded)
    return docs if isinstance(docs, Comparison) else compare_documents(spec, *docs)


def read_pair(live: bytes, shadow: bytes, spec: CompareSpec, content_type: str = "application/json",
              shadow_content_type: str | None = None, *, live_encoding: str | None = None,
              shadow_encoding: str | None = None, max_decoded: int = MAX_DECODED) -> tuple[object, object] | Comparison:
    """Both canonical documents, or the failed Comparison saying why one could not be read."""
    docs = []
    for side, body, ctype, encoding in (("live", live, content_type, live_encoding),
                                        ("shadow", shadow, shadow_content_type or content_type, shadow_encoding)):
        try:
            docs.append(extract(decode(body, encoding, max_decoded), spec.format, ctype))
        except DecodeError as exc:
            return _failed(f"{side}: {exc}", _DECODE_REASONS[exc.reason])
        except ExtractionError as exc:
            return _failed(f"{side}: {exc}", exc.reason)
    return docs[0], docs[1]


InstanceCounter = Callable[[CompareSpec, object, object], InstanceCounts | None]


def compare_documents(spec: CompareSpec, live: object, shadow: object,
                      count: InstanceCounter | None = None) -> Comparison:
    """Compare two canonical documents (see `extract`); `count` fills in `instances` (the Comparison
    is built once: a frozen dataclass costs about as much to build as a small document to compare)."""
    tally = _Tally(spec, spec.max_values)
    roots = _root_pairs(tally, live, shadow)
    if spec.paths and not roots:
        return _failed("paths matched nothing (or only ignored values) in either response", "paths_matched_nothing")
    _walk(tally, roots)
    return tally.result(None if count is None else count(spec, live, shadow))


_DECODE_REASONS = {"too_large": DECODED_TOO_LARGE, "unsupported_encoding": "unsupported_encoding",
                   "corrupt": "corrupt_encoding"}


def _failed(error: str, reason: str) -> Comparison:
    return Comparison(agree=False, fields=MappingProxyType({}), error=error, error_reason=reason)


# ---- comparison ---------------------------------------------------------------------------------


_PROB_KEY = re.compile(r"prob|score|logit|softmax", re.IGNORECASE)
_LABEL_KEY = re.compile(r"(?:^|_)(?:labels?|class(?:es)?|class_ids?|class_names?|categor(?:y|ies))$", re.IGNORECASE)
# Integers under these keys are class labels: a classifier's `predictions` in KServe V1, MLflow and
# TF Serving, and the `predict` output of MLServer's sklearn and xgboost runtimes. (Regressors
# answer floats, which stay numbers.)
_INT_LABEL_KEYS = frozenset({"predictions", "predict"})
_STRING_LABEL_FORMATS = frozenset({"kserve-v1", "open-inference-v2", "tfserving", "mlflow"})
# Where the batch lives: that list holds one value per instance, so its summing to 1 is chance.
_BATCH_DEPTH: Mapping[str, int] = {"kserve-v1": 1, "tfserving": 1, "mlflow": 1, "open-inference-v2": 2}
_SPACES = re.compile(r"\s+")


class _Pair:
    """A node of each document at one location, to be compared."""

    __slots__ = ("key", "live", "location", "name", "shadow")

    def __init__(self, location: Location, name: str, key: str | None, live: object, shadow: object) -> None:
        self.location = location
        self.name = name  # the field
        self.key = key  # the nearest object key above: what the values are called
        self.live = live
        self.shadow = shadow


@dataclass(slots=True)
class _Tally:
    """What one `compare` call accumulates; never outlives it."""

    spec: CompareSpec
    budget: int
    fields: dict[str, bool] = field(default_factory=dict)
    labels: list[bool] = field(default_factory=list)
    similarities: list[float] = field(default_factory=list)
    truncated: bool = False

    def record(self, name: str, ok: bool) -> None:
        self.fields[name] = ok and self.fields.get(name, True)

    def take(self, n: int) -> int:
        """Spend up to `n` values of the budget; returns how many were granted."""
        granted = min(n, self.budget)
        self.budget -= granted
        self.truncated = self.truncated or granted < n
        return granted

    def result(self, instances: InstanceCounts | None = None) -> Comparison:
        sims = self.similarities
        return Comparison(agree=all(self.fields.values()), fields=MappingProxyType(self.fields),
                          label_agree=all(self.labels) if self.labels else None,
                          text_similarity=math.fsum(sims) / len(sims) if sims else None,
                          truncated=self.truncated, instances=instances)


def _ignored(spec: CompareSpec, location: Location) -> bool:
    return bool(spec.ignore) and any(p.matches(location) for p in spec.ignore)


def _root_pairs(t: _Tally, live: object, shadow: object) -> list[_Pair]:
    live_at, shadow_at = _select(t, live), _select(t, shadow)
    return [_Pair(loc, field_name(loc), _nearest_key(loc), live_at.get(loc, MISSING), shadow_at.get(loc, MISSING))
            for loc in _union(live_at, shadow_at) if not _ignored(t.spec, loc)]


def _nearest_key(location: Location) -> str | None:
    return next((part for part in reversed(location) if isinstance(part, str)), None)


_K = TypeVar("_K")


def _union(live: Mapping[_K, object], shadow: Mapping[_K, object]) -> list[_K]:
    return list(live) + [k for k in shadow if k not in live]  # (no generator: its object costs per call)


def _select(t: _Tally, doc: object) -> dict[Location, object]:
    if not t.spec.paths:
        return {(): doc}
    found: dict[Location, object] = {}
    for path in t.spec.paths:
        found.update(_resolve(t, doc, path.segments))
    # Overlapping paths ($.a and $.a.b) must not compare a value twice.
    return {loc: v for loc, v in found.items() if not any(loc[:i] in found for i in range(len(loc)))}


def _resolve(t: _Tally, doc: object, segments: tuple[Segment, ...]) -> list[tuple[Location, object]]:
    frontier: list[tuple[Location, object]] = [((), doc)]
    for segment in segments:
        frontier = [child for loc, node in frontier for child in _children(loc, node, segment)]
        if len(frontier) > t.spec.max_values:
            frontier = frontier[:t.spec.max_values]
            t.truncated = True
    return frontier


def _children(loc: Location, node: object, segment: Segment) -> list[tuple[Location, object]]:
    if segment is ANY:
        items = enumerate(node) if isinstance(node, list) else node.items() if isinstance(node, dict) else ()
        return [((*loc, k), v) for k, v in items]
    if isinstance(segment, int) and isinstance(node, list) and segment < len(node):
        return [((*loc, segment), node[segment])]
    if isinstance(segment, str) and isinstance(node, dict) and segment in node:
        return [((*loc, segment), node[segment])]
    return []


def _walk(t: _Tally, roots: list[_Pair]) -> None:
    # Iterative, so deep documents cannot exhaust the interpreter stack; reversed pushes keep
    # document order in `fields`.
    stack = roots[::-1]
    while stack:
        if t.budget <= 0:
            t.truncated = True
            return
        t.budget -= 1
        stack.extend(reversed(_visit(t, stack.pop())))


def _visit(t: _Tally, p: _Pair) -> list[_Pair]:
    live, shadow = p.live, p.shadow
    if isinstance(live, dict) and isinstance(shadow, dict):
        return _object_pairs(t, p, live, shadow)
    if isinstance(live, list) and isinstance(shadow, list):
        return _list_pairs(t, p, live, shadow)
    t.record(p.name, _kind(live) == _kind(shadow) and _leaf_match(t, p))
    return []


def _object_pairs(t: _Tally, p: _Pair, live: dict[str, object], shadow: dict[str, object]) -> list[_Pair]:
    t.record(p.name, True)
    keys = _union(live, shadow)
    if len(keys) > t.budget:  # the rest could never be visited; don't build them
        keys, t.truncated = keys[:t.budget], True
    pairs = []
    for k in keys:
        location = (*p.location, k)
        if not _ignored(t.spec, location):
            pairs.append(_Pair(location, p.name + _key_segment(k), k, live.get(k, MISSING), shadow.get(k, MISSING)))
    return pairs


def _list_pairs(t: _Tally, p: _Pair, live: list[object], shadow: list[object]) -> list[_Pair]:
    t.record(p.name, len(live) == len(shadow))
    if len(live) != len(shadow) and len(p.location) == _BATCH_DEPTH.get(t.spec.format, -1):
        t.labels.append(False)  # a row answered on one side only: its label cannot agree
    name = p.name + "[*]"
    if _numbers(live) and _numbers(shadow) and not _is_label_key(p.key) and not _ignores_below(t.spec, p.location) \
            and not (_int_labels(p.key, live) and _int_labels(p.key, shadow)):
        _compare_numbers(t, p, name, live, shadow)
        return []
    count = min(len(live), len(shadow))
    if count > t.budget:
        count, t.truncated = t.budget, True
    pairs = [_Pair((*p.location, i), name, p.key, live[i], shadow[i]) for i in range(count)]
    return [pair for pair in pairs if not _ignored(t.spec, pair.location)] if t.spec.ignore else pairs


def _numbers(values: list[object]) -> TypeGuard[list[int | float]]:
    return all(type(x) is float or type(x) is int for x in values)


def _ignores_below(spec: CompareSpec, location: Location) -> bool:
    return any(len(p.segments) == len(location) + 1 for p in spec.ignore)


def _compare_numbers(t: _Tally, p: _Pair, name: str, live: list[int | float], shadow: list[int | float]) -> None:
    """The fast path for number lists (vectors, embeddings): one field, no per-element pairs."""
    count = t.take(min(len(live), len(shadow)))
    if count:
        tol = t.spec.abs_tol, t.spec.rel_tol
        t.record(name, all(_close(s, v, *tol) for v, s in zip(live[:count], shadow[:count], strict=True)))
    if count == len(live) == len(shadow) and _probability_vectors(t.spec, p, live, shadow):
        live_f, shadow_f = _floats(live), _floats(shadow)
        if live_f is not None and shadow_f is not None:
            t.labels.append(_argmax(live_f) == _argmax(shadow_f))


def _close(value: int | float, reference: int | float, abs_tol: float, rel_tol: float) -> bool:
    """numpy.isclose(value, reference): |value - reference| <= abs_tol + rel_tol * |reference|.

    The live value is the reference, so the tolerance scales with what production returned.
    NaN matches only NaN; an infinity only the same infinity.
    """
    if value == reference:
        return True
    try:
        a, b = float(value), float(reference)
    except OverflowError:  # an integer beyond float range: only exact equality, checked above
        return False
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    if math.isinf(a) or math.isinf(b):
        return False
    return abs(a - b) <= abs_tol + rel_tol * abs(b)


def _probability_vectors(spec: CompareSpec, p: _Pair, live: list[int | float], shadow: list[int | float]) -> bool:
    if len(live) < 2:
        return False
    if p.key is not None and _key_kinds(p.key)[1]:
        return True
    if len(p.location) == _BATCH_DEPTH.get(spec.format, -1):
        return False
    return _is_distribution(live) or _is_distribution(shadow)


def _is_distribution(values: list[int | float]) -> bool:
    # 0.01: outputs rounded to a few decimals over many classes still sum to about 1.
    try:
        return all(0.0 <= x <= 1.0 for x in values) and abs(math.fsum(values) - 1.0) <= 0.01
    except OverflowError:
        return False


def _floats(values: list[int | float]) -> list[float] | None:
    try:
        floats = [float(x) for x in values]
    except OverflowError:
        return None
    return None if any(math.isnan(x) for x in floats) else floats


def _argmax(values: list[float]) -> int:
    """The index of the first maximum, as numpy.argmax (no NaN here: `_floats` refused them)."""
    at = 0
    for i in range(1, len(values)):
        if values[i] > values[at]:
            at = i
    return at


def _int_labels(key: str | None, values: list[int | float]) -> bool:
    return key in _INT_LABEL_KEYS and all(type(x) is int for x in values)


def _is_label_key(key: str | None) -> bool:
    return key is not None and _key_kinds(key)[0]


_KEY_KINDS: dict[str, tuple[bool, bool]] = {}
_KEY_KINDS_MAX: Final = 4096


def _key_kinds(key: str) -> tuple[bool, bool]:
    """(a label key, a probability key): the same keys come in every response, so what the two
    regexes say of one is remembered (bounded)."""
    kinds = _KEY_KINDS.get(key)
    if kinds is None:
        if len(_KEY_KINDS) >= _KEY_KINDS_MAX:
            _KEY_KINDS.clear()
        kinds = _KEY_KINDS[key] = (_LABEL_KEY.search(key) is not None, _PROB_KEY.search(key) is not None)
    return kinds


def _leaf_match(t: _Tally, p: _Pair) -> bool:
    live, shadow = p.live, p.shadow
    if isinstance(live, str) and isinstance(shadow, str) and t.spec.format == "openai":
        return _text_match(t, live, shadow)
    string_label = isinstance(live, str) and t.spec.format in _STRING_LABEL_FORMATS
    int_label = type(live) is int and p.key in _INT_LABEL_KEYS
    if live is not None and (string_label or int_label or _is_label_key(p.key)):
        t.labels.append(live == shadow)
        return live == shadow
    if isinstance(live, int | float) and isinstance(shadow, int | float) and _kind(live) == "number":
        return _close(shadow, live, t.spec.abs_tol, t.spec.rel_tol)
    return live == shadow


def _text_match(t: _Tally, live: str, shadow: str) -> bool:
    a, b = normalise_whitespace(live), normalise_whitespace(shadow)
    t.similarities.append(text_similarity(a, b))
    return a == b


def normalise_whitespace(text: str) -> str:
    """Runs of whitespace collapsed to one space, ends stripped."""
    return _SPACES.sub(" ", text).strip()


def text_similarity(a: str, b: str) -> float:
    """2 * LCS / (len(a) + len(b)) over whitespace tokens of the first TEXT_LIMIT characters, in [0, 1].

    The same measure as difflib's `SequenceMatcher.ratio`, but with the true longest common
    subsequence, computed bit-parallel (Allison and Dix, 1986) in O(len(a) * len(b) / 64) word
    operations. SequenceMatcher is quadratic or worse on repetitive text (seconds for 1,000
    tokens), which would stall the event loop.
    """
    if a == b:
        return 1.0
    tokens_a, tokens_b = a[:TEXT_LIMIT].split(), b[:TEXT_LIMIT].split()
    total = len(tokens_a) + len(tokens_b)
    return 2 * _lcs_length(tokens_a, tokens_b) / total if total else 1.0


def _lcs_length(a: list[str], b: list[str]) -> int:
    # Bit i of `row` is 0 where row i of the LCS table steps up: the zeros count the LCS length.
    positions: dict[str, int] = {}
    for i, token in enumerate(a):
        positions[token] = positions.get(token, 0) | 1 << i
    full = (1 << len(a)) - 1
    row = full
    for token in b:
        matched = row & positions.get(token, 0)
        row = ((row + matched) | (row - matched)) & full
    return len(a) - row.bit_count()
