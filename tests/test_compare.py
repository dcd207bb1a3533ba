"""Shadow comparison: extraction per format, field-by-field matching, and noise classification."""

from __future__ import annotations

import json
import math
import random
from collections import Counter
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from router.analysis.compare import (
    _KEY_KINDS,
    _KEY_KINDS_MAX,
    ANY,
    FORMATS,
    MAX_VALUES,
    CompareSpec,
    Comparison,
    ExtractionError,
    Format,
    _key_kinds,
    compare,
    extract,
    field_name,
    normalise_whitespace,
    parse_path,
    text_similarity,
)
from router.analysis.extract import _load_json
from router.analysis.jsonpath import _SEGMENTS, _SEGMENTS_MAX
from router.analysis.stats_tests import classify_field, fisher_exact_greater, normal_quantile, wilson_interval

SSE = "text/event-stream"


def body(doc: object) -> bytes:
    return json.dumps(doc).encode()


def run(live: object, shadow: object, format: str = "json", **options: object) -> Comparison:
    spec = CompareSpec.build(format=format, **options)  # type: ignore[arg-type]
    return compare(body(live), body(shadow), spec)


def sse(*events: str, crlf: bool = False) -> bytes:
    text = "".join(f"{event}\n\n" for event in events)
    return (text.replace("\n", "\r\n") if crlf else text).encode()


def chat_chunk(index: int, **delta: object) -> str:
    return "data: " + json.dumps({"id": "c1", "object": "chat.completion.chunk",
                                  "choices": [{"index": index, "delta": delta, "finish_reason": None}]})


# ---- extraction ----------------------------------------------------------------------------------

CHAT_STREAM = sse(
    ": keep-alive comment",
    chat_chunk(0, role="assistant"),
    chat_chunk(0, content="Hel"),
    "event: message\nid: 7\n" + chat_chunk(0, content="lo,  wor"),
    # Per the SSE rules, data lines of one event are joined with a newline: still one JSON value.
    'data: {"choices": [{"index": 0,\ndata:  "delta": {"content": "ld \\u2028!"}}]}',
    chat_chunk(0),
    'data: {"choices": [], "usage": {"total_tokens": 9}}',
    "data: [DONE]",
    "data: {not json, but after [DONE]}",
    crlf=True,
)

COMPLETION_STREAM = sse(
    'data: {"choices": [{"index": 1, "text": "B1 "}]}',
    'data: {"choices": [{"index": 0, "text": "A1 "}]}',
    'data: {"choices": [{"index": 0, "text": "A2"}, {"index": 1, "text": "B2"}]}',
    "data: [DONE]",
)

EXTRACTION_CASES: list[tuple[str, Format, bytes, str, object]] = [
    ("kserve numbers", "kserve-v1", body({"predictions": [1, 2.5]}), "application/json", {"predictions": [1, 2.5]}),
    ("kserve mixed", "kserve-v1", body({"predictions": [{"a": [1]}, "cat"], "model_name": "m"}),
     "application/json", {"predictions": [{"a": [1]}, "cat"]}),
    ("v2 reshaped, id and version dropped", "open-inference-v2",
     body({"id": "r1", "model_name": "m", "model_version": "3", "outputs": [
         {"name": "probs", "datatype": "FP32", "shape": [2, 3], "data": [1, 2, 3, 4, 5, 6]},
         {"name": "label", "datatype": "BYTES", "shape": [2], "data": ["a", "b"]}]}),
     "application/json", {"outputs": {"probs": [[1, 2, 3], [4, 5, 6]], "label": ["a", "b"]}}),
    ("v2 nested data, 3-d", "open-inference-v2",
     body({"outputs": [{"name": "t", "datatype": "INT32", "shape": [2, 1, 2], "data": [[1, 2], [3, 4]]}]}),
     "application/json", {"outputs": {"t": [[[1, 2]], [[3, 4]]]}}),
    ("v2 scalar and empty", "open-inference-v2",
     body({"outputs": [{"name": "s", "shape": [], "data": [7]}, {"name": "e", "shape": [0, 3], "data": []}]}),
     "application/json", {"outputs": {"s": 7, "e": []}}),
    ("tfserving row", "tfserving", body({"predictions": [[0.1, 0.9]]}), "application/json",
     {"predictions": [[0.1, 0.9]]}),
    ("tfserving columnar", "tfserving", body({"outputs": {"scores": [[0.1, 0.9]]}}), "application/json",
     {"outputs": {"scores": [[0.1, 0.9]]}}),
    ("mlflow 2.x", "mlflow", body({"predictions": [0, 1]}), "application/json", {"predictions": [0, 1]}),
    ("mlflow bare list", "mlflow", body([0, 1]), "application/json", {"predictions": [0, 1]}),
    ("mlflow bare object", "mlflow", body({"col": [0, 1]}), "application/json", {"predictions": {"col": [0, 1]}}),
    ("openai chat", "openai",
     body({"id": "x", "choices": [{"index": 1, "message": {"role": "assistant", "content": "two"}},
                                  {"index": 0, "message": {"role": "assistant", "content": None}}]}),
     "application/json", {"choices": [{"message": {"content": None}}, {"message": {"content": "two"}}]}),
    ("openai completion", "openai", body({"choices": [{"index": 0, "text": "hi"}]}), "application/json",
     {"choices": [{"text": "hi"}]}),
    ("openai chat stream", "openai", CHAT_STREAM, "text/event-stream; charset=utf-8",
     {"choices": [{"message": {"content": "Hello,  world \u2028!"}}]}),
    ("openai stream sniffed", "openai", CHAT_STREAM, "application/json",
     {"choices": [{"message": {"content": "Hello,  world \u2028!"}}]}),
    ("openai completion stream, two choices", "openai", COMPLETION_STREAM, SSE,
     {"choices": [{"text": "A1 A2"}, {"text": "B1 B2"}]}),
    ("openai stream, role only", "openai", sse(chat_chunk(0, role="assistant"), "data: [DONE]"), SSE,
     {"choices": [{"message": {"content": None}}]}),
    ("json whole document", "json", body({"a": [1, {"b": None}]}), "application/json", {"a": [1, {"b": None}]}),
]


@pytest.mark.parametrize(("format", "raw", "content_type", "expected"),
                         [c[1:] for c in EXTRACTION_CASES], ids=[c[0] for c in EXTRACTION_CASES])
def test_extract(format: Format, raw: bytes, content_type: str, expected: object) -> None:
    assert extract(raw, format, content_type) == expected


ERROR_CASES: list[tuple[Format, bytes, str, str]] = [
    ("json", b"<html>502</html>", "text/html", "not JSON"),
    ("json", b"\xff\xfe{", "application/json", "not JSON"),
    ("json", b"[" * 100_000 + b"]" * 100_000, "application/json", "nested too deeply"),
    ("kserve-v1", body({"outputs": []}), "application/json", "no 'predictions'"),
    ("kserve-v1", body({"error": "model not loaded"}), "application/json", "error response: 'model not loaded'"),
    ("kserve-v1", body([1, 2]), "application/json", "expected a JSON object, got list"),
    ("tfserving", body({"result": 1}), "application/json", "no 'predictions' or 'outputs'"),
    ("mlflow", body({"error_code": "BAD_REQUEST", "message": "boom"}), "application/json", "error response: 'boom'"),
    ("mlflow", body(3), "application/json", "expected a JSON object or list"),
    ("open-inference-v2", body({"outputs": [{"name": "a", "shape": [2, 2], "data": [1, 2, 3]}]}),
     "application/json", "shape [2, 2] holds 4 values, data has 3"),
    ("open-inference-v2", body({"outputs": [{"name": "a", "shape": [1], "data": [1]}] * 2}),
     "application/json", "output 'a' appears twice"),
    ("open-inference-v2", body({"outputs": [{"shape": [1], "data": [1]}]}), "application/json", "string 'name'"),
    ("open-inference-v2", body({"outputs": [{"name": "a", "shape": [-1], "data": [1]}]}),
     "application/json", "shape is not a list of sizes"),
    ("openai", body({"object": "list"}), "application/json", "no 'choices'"),
    ("openai", body({"choices": [{"index": 0, "message": {"content": 5}}]}), "application/json", "not a string"),
    ("openai", body({"choices": [{"index": 0, "logprobs": None}]}), "application/json", "neither 'message' nor 'text'"),
    ("openai", sse(chat_chunk(0, content="cut")), SSE, "without 'data: [DONE]'"),
    ("openai", sse('data: {"error": {"message": "overloaded"}}', "data: [DONE]"), SSE, "error event"),
    ("openai", sse("data: {oops", "data: [DONE]"), SSE, "not JSON"),
    ("openai", b"data: \xff\n\n", SSE, "not UTF-8"),
]


@pytest.mark.parametrize(("format", "raw", "content_type", "message"), ERROR_CASES)
def test_bad_bodies_are_extraction_errors(format: Format, raw: bytes, content_type: str, message: str) -> None:
    with pytest.raises(ExtractionError) as info:
        extract(raw, format, content_type)
    assert message in str(info.value)
    good = {"kserve-v1": body({"predictions": [1]}), "open-inference-v2": body({"outputs": []}),
            "tfserving": body({"predictions": [1]}), "mlflow": body([1]), "openai": body({"choices": []}),
            "json": body(1)}[format]
    spec = CompareSpec.build(format=format)
    for result, side in ((compare(raw, good, spec, content_type, "application/json"), "live"),
                         (compare(good, raw, spec, "application/json", content_type), "shadow")):
        assert result.error is not None and result.error.startswith(f"{side}: ")
        assert message in result.error
        assert not result.agree and result.fields == {}


# ---- numbers, tolerance edges ---------------------------------------------------------------------

# abs_tol + rel_tol * |live| = 0.5 + 0.25 * 4 = 1.5 exactly in binary floating point, so the edge
# is tested without rounding; nextafter is the next representable double beyond it.
NUMBER_CASES: list[tuple[str, object, object, bool]] = [
    ("equal", 4.0, 4.0, True),
    ("exactly abs+rel above", 4.0, 5.5, True),
    ("just beyond above", 4.0, math.nextafter(5.5, math.inf), False),
    ("exactly abs+rel below", 4.0, 2.5, True),
    ("just beyond below", 4.0, math.nextafter(2.5, -math.inf), False),
    # The live value is the reference: |5.6 - 4| = 1.6 exceeds 0.5 + 0.25*4 but not 0.5 + 0.25*5.6.
    ("live is the reference", 4.0, 5.6, False),
    ("live is the reference, swapped", 5.6, 4.0, True),
    ("int and float", 1, 1.0, True),
    ("negative zero", 0.0, -0.0, True),
    ("nan both", math.nan, math.nan, True),
    ("nan live only", math.nan, 1.0, False),
    ("nan shadow only", 1.0, math.nan, False),
    ("inf both", math.inf, math.inf, True),
    ("inf signs", math.inf, -math.inf, False),
    ("inf vs huge", math.inf, 1e308, False),
    ("huge ints", 10**400, 10**400, True),
    ("huge ints differ", 10**400, 10**400 + 1, False),
    ("bool is not a number", True, 1, False),
    ("null equals null", None, None, True),
    ("null is not zero", None, 0, False),
    ("strings exact", "cat", "cat", True),
    ("strings case", "cat", "Cat", False),
]


@pytest.mark.parametrize(("live", "shadow", "match"), [c[1:] for c in NUMBER_CASES], ids=[c[0] for c in NUMBER_CASES])
def test_leaf_values(live: object, shadow: object, match: bool) -> None:
    # As a lone leaf and inside a list: number lists take a separate fast path that must agree.
    leaf = run({"x": live}, {"x": shadow}, abs_tol=0.5, rel_tol=0.25)
    assert leaf.fields["$.x"] is match and leaf.agree is match
    listed = run({"x": [live]}, {"x": [shadow]}, abs_tol=0.5, rel_tol=0.25)
    assert listed.fields["$.x[*]"] is match and listed.agree is match


def test_default_tolerances() -> None:
    assert run([1.0], [1.0 + 0.9e-3]).agree
    assert not run([1.0], [1.0 + 1.1e-3 + 1e-6]).agree
    assert run([0.0], [0.9e-6]).agree


# ---- labels --------------------------------------------------------------------------------------

LABEL_CASES: list[tuple[str, Format, object, object, bool, bool | None]] = [
    ("named scores, same argmax", "kserve-v1", {"predictions": [{"scores": [0.1, 0.9]}]},
     {"predictions": [{"scores": [0.3, 0.7]}]}, False, True),
    ("named scores, argmax flips", "kserve-v1", {"predictions": [{"scores": [0.45, 0.55]}]},
     {"predictions": [{"scores": [0.55, 0.45]}]}, False, False),
    ("logits need not sum to one", "kserve-v1", {"predictions": [{"logits": [-3.0, 2.0, 9.0]}]},
     {"predictions": [{"logits": [-3.0, 2.5, 9.5]}]}, False, True),
    ("unnamed distributions", "kserve-v1", {"predictions": [[0.2, 0.8], [0.6, 0.4]]},
     {"predictions": [[0.25, 0.75], [0.6, 0.4]]}, False, True),
    ("v2 output named probs", "open-inference-v2",
     {"outputs": [{"name": "probs", "shape": [1, 3], "data": [0.1, 0.2, 0.7]}]},
     {"outputs": [{"name": "probs", "shape": [1, 3], "data": [0.1, 0.7, 0.2]}]}, False, False),
    ("a batch summing to one is not a vector", "kserve-v1", {"predictions": [0.3, 0.7]},
     {"predictions": [0.3, 0.7]}, True, None),
    ("not a distribution", "json", {"v": [3.0, 4.0]}, {"v": [3.0, 4.5]}, False, None),
    ("class id under a label key", "kserve-v1", {"predictions": [{"class_id": 3}]},
     {"predictions": [{"class_id": 4}]}, False, False),
    ("string classes", "kserve-v1", {"predictions": ["cat", "dog"]}, {"predictions": ["cat", "dog"]}, True, True),
    ("strings in plain json are not labels", "json", {"model": "v1"}, {"model": "v1"}, True, None),
]


@pytest.mark.parametrize(("format", "live", "shadow", "agree", "label_agree"),
                         [c[1:] for c in LABEL_CASES], ids=[c[0] for c in LABEL_CASES])
def test_label_agreement(format: Format, live: object, shadow: object, agree: bool, label_agree: bool | None) -> None:
    result = run(live, shadow, format)
    assert result.agree is agree
    assert result.label_agree is label_agree


# ---- structure, fields, narrowing ----------------------------------------------------------------


def test_fields_are_generalised_paths() -> None:
    live = {"predictions": [{"scores": [0.1, 0.9], "label": "b", "odd key": 1}, {"scores": [0.6, 0.4], "label": "a",
                                                                                  "odd key": 1}]}
    shadow = {"predictions": [{"scores": [0.1, 0.9], "label": "b", "odd key": 1}, {"scores": [0.6, 0.4], "label": "c",
                                                                                    "odd key": 2}]}
    result = run(live, shadow, "kserve-v1")
    assert dict(result.fields) == {
        "$": True, "$.predictions": True, "$.predictions[*]": True, "$.predictions[*].scores": True,
        "$.predictions[*].scores[*]": True, "$.predictions[*].label": False, "$.predictions[*]['odd key']": False}
    assert not result.agree and result.label_agree is False
    assert not result.truncated and result.error is None


STRUCTURE_CASES: list[tuple[str, object, object, dict[str, bool]]] = [
    ("missing key", {"a": 1, "b": 2}, {"a": 1}, {"$": True, "$.a": True, "$.b": False}),
    ("extra key", {"a": 1}, {"a": 1, "c": 3}, {"$": True, "$.a": True, "$.c": False}),
    ("list length", {"a": [1, 2]}, {"a": [1, 2, 3]}, {"$": True, "$.a": False, "$.a[*]": True}),
    ("empty lists", {"a": []}, {"a": []}, {"$": True, "$.a": True}),
    ("type: object vs list", {"a": {"x": 1}}, {"a": [1]}, {"$": True, "$.a": False}),
    ("type: number vs string", {"a": 1}, {"a": "1"}, {"$": True, "$.a": False}),
    ("root types", [1], {"a": 1}, {"$": False}),
]


@pytest.mark.parametrize(("live", "shadow", "fields"), [c[1:] for c in STRUCTURE_CASES],
                         ids=[c[0] for c in STRUCTURE_CASES])
def test_structural_mismatches(live: object, shadow: object, fields: dict[str, bool]) -> None:
    result = run(live, shadow)
    assert dict(result.fields) == fields
    assert result.agree is all(fields.values())


LIVE = {"id": "r1", "model_version": "7", "predictions": [
    {"scores": [0.2, 0.8], "debug": {"ms": 12}}, {"scores": [0.9, 0.1], "debug": {"ms": 30}}]}
SHADOW = {"id": "r2", "model_version": "8", "predictions": [
    {"scores": [0.2, 0.8], "debug": {"ms": 15}}, {"scores": [0.5, 0.5], "debug": {"ms": 31}}]}

NARROWING_CASES: list[tuple[str, dict[str, list[str]], dict[str, bool]]] = [
    ("everything", {}, {"$": True, "$.id": False, "$.model_version": False, "$.predictions": True,
                        "$.predictions[*]": True, "$.predictions[*].scores": True, "$.predictions[*].scores[*]": False,
                        "$.predictions[*].debug": True, "$.predictions[*].debug.ms": False}),
    ("ignore", {"ignore": ["$.id", "$.model_version", "$.predictions[*].debug"]},
     {"$": True, "$.predictions": True, "$.predictions[*]": True, "$.predictions[*].scores": True,
      "$.predictions[*].scores[*]": False}),
    ("ignore one index", {"ignore": ["$.id", "$.model_version", "$.predictions[1]", "$.predictions[0].debug"]},
     {"$": True, "$.predictions": True, "$.predictions[*]": True, "$.predictions[*].scores": True,
      "$.predictions[*].scores[*]": True}),
    ("paths", {"paths": ["$.predictions[*].scores"]},
     {"$.predictions[*].scores": True, "$.predictions[*].scores[*]": False}),
    ("paths by index", {"paths": ["$.predictions[0]"], "ignore": ["$.predictions[*].debug"]},
     {"$.predictions[*]": True, "$.predictions[*].scores": True, "$.predictions[*].scores[*]": True}),
    ("overlapping paths compare once", {"paths": ["$.predictions", "$.predictions[*].debug", "$['id']"]},
     {"$.predictions": True, "$.predictions[*]": True, "$.predictions[*].scores": True,
      "$.predictions[*].scores[*]": False, "$.predictions[*].debug": True, "$.predictions[*].debug.ms": False,
      "$.id": False}),
    ("ignore a wildcard key", {"paths": ["$.predictions[1].debug"], "ignore": ["$.predictions[*].debug[*]"]},
     {"$.predictions[*].debug": True}),
]


@pytest.mark.parametrize(("options", "fields"), [c[1:] for c in NARROWING_CASES], ids=[c[0] for c in NARROWING_CASES])
def test_paths_and_ignore(options: dict[str, list[str]], fields: dict[str, bool]) -> None:
    result = run(LIVE, SHADOW, **options)  # type: ignore[arg-type]
    assert dict(result.fields) == fields
    assert result.agree is all(fields.values())


def test_paths_missing_on_one_side_and_on_both() -> None:
    one = run({"predictions": [{"s": 1}, {"s": 2}]}, {"predictions": [{"s": 1}]}, paths=["$.predictions[*].s"])
    assert dict(one.fields) == {"$.predictions[*].s": False}
    # A path that matches nothing anywhere is a misconfiguration, not a perfect agreement.
    neither = run({"a": 1}, {"a": 1}, paths=["$.predictions"])
    assert neither.error is not None and neither.error.startswith("paths matched nothing") and not neither.agree


def test_v2_compares_per_output_name_whatever_the_order() -> None:
    live = {"id": "1", "outputs": [{"name": "a", "shape": [1], "data": [1.0]}, {"name": "b", "shape": [1], "data": [2]}]}
    shadow = {"id": "2", "model_version": "9",
              "outputs": [{"name": "b", "shape": [1], "data": [2]}, {"name": "a", "shape": [1], "data": [1.0]}]}
    result = run(live, shadow, "open-inference-v2")
    assert result.agree
    assert set(result.fields) == {"$", "$.outputs", "$.outputs.a", "$.outputs.a[*]", "$.outputs.b", "$.outputs.b[*]"}
    assert not run(live, {"outputs": [live["outputs"][0]]}, "open-inference-v2").fields["$.outputs.b"]


# ---- text ----------------------------------------------------------------------------------------


def test_text_whitespace_and_similarity() -> None:
    spec = CompareSpec.build(format="openai")
    live = body({"choices": [{"index": 0, "message": {"content": "The  cat\n sat. "}}]})
    same = compare(live, body({"choices": [{"index": 0, "message": {"content": "The cat sat."}}]}), spec)
    assert same.agree and same.text_similarity == 1.0 and same.label_agree is None
    other = compare(live, body({"choices": [{"index": 0, "message": {"content": "The dog sat."}}]}), spec)
    assert not other.agree and other.text_similarity == pytest.approx(2 / 3)
    streamed = compare(live, CHAT_STREAM.replace(b"Hel", b"The cat sat. Hel"), spec, "application/json", SSE)
    assert dict(streamed.fields)["$.choices[*].message.content"] is False
    assert streamed.text_similarity is not None and 0 < streamed.text_similarity < 1


@pytest.mark.parametrize(("a", "b", "expected"), [
    ("", "", 1.0), ("a b", "", 0.0), ("a b c d", "a b c d", 1.0), ("a b c d", "d c b a", 0.25),
    ("x " * 3000, "x " * 3000 + "y", 1.0),  # identical within TEXT_LIMIT
])
def test_text_similarity(a: str, b: str, expected: float) -> None:
    assert text_similarity(a, b) == pytest.approx(expected)


def test_normalise_whitespace() -> None:
    assert normalise_whitespace(" a\t\n b  c \r\n") == "a b c"


# ---- the value cap -------------------------------------------------------------------------------


@pytest.mark.parametrize("make", [lambda i: float(i), lambda i: {"v": i}], ids=["numbers", "objects"])
def test_value_cap(make: Callable[[int], object]) -> None:
    small = [make(i) for i in range(MAX_VALUES // 3)]
    assert not run({"p": small}, {"p": small}).truncated
    huge = [make(i) for i in range(3 * MAX_VALUES)]
    late_difference = [*huge[:-1], make(-1)]
    result = run({"p": huge}, {"p": late_difference})
    # The difference sits beyond the cap: unseen, and the result says the look was partial.
    assert result.truncated and result.agree
    early_difference = [make(-1), *huge[1:]]
    assert not run({"p": huge}, {"p": early_difference}).agree


def test_value_cap_is_configurable() -> None:
    result = run(list(range(10)), list(range(10)), max_values=5)
    assert result.truncated


# ---- path parsing and spec validation -------------------------------------------------------------

PATH_CASES: list[tuple[str, tuple[object, ...]]] = [
    ("$", ()),
    ("$.predictions", ("predictions",)),
    ("$.outputs[*].data[0]", ("outputs", ANY, "data", 0)),
    ("$['odd key'][12]", ("odd key", 12)),
    ('$["it\'s"]', ("it's",)),
    ("$['a\\'b\\\\c']", ("a'b\\c",)),
    ("$.model-version.x_1", ("model-version", "x_1")),
]


@pytest.mark.parametrize(("text", "segments"), PATH_CASES)
def test_parse_path(text: str, segments: tuple[object, ...]) -> None:
    assert parse_path(text).segments == segments


PATH_ERRORS: list[tuple[str, str]] = [
    ("predictions", "bad path 'predictions': a path starts with '$'"),
    ("", "a path starts with '$'"),
    ("$.", "at offset 2: expected a key after '.'"),
    ("$..a", "at offset 1: recursive descent '..' is not supported"),
    ("$.*", "at offset 1: write the wildcard as '[*]'"),
    ("$.a[", "at offset 3: expected [n], [*] or ['key']"),
    ("$.a[-1]", "at offset 3: negative indices are not supported"),
    ("$.a['b]", "at offset 3: expected [n], [*] or ['key']"),
    ("$a", "at offset 1: unexpected 'a'"),
    ("$.a b", "at offset 3: unexpected ' '"),
]


@pytest.mark.parametrize(("text", "message"), PATH_ERRORS)
def test_parse_path_errors(text: str, message: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_path(text)
    assert message in str(info.value)


@pytest.mark.parametrize(("options", "message"), [
    ({"format": "kserve"}, "unknown format 'kserve'; expected one of kserve-v1, open-inference-v2"),
    ({"paths": ["$.a", "a"]}, "paths[1]: bad path 'a': a path starts with '$'"),
    ({"ignore": "$.id"}, "ignore: expected a list of paths"),
    ({"paths": None}, "paths: expected a list of paths, got None"),
    ({"ignore": [3]}, "ignore[0]: expected a path string"),
    ({"abs_tol": -1.0}, "abs_tol: expected a finite number >= 0"),
    ({"rel_tol": math.nan}, "rel_tol: expected a finite number >= 0"),
    ({"rel_tol": True}, "rel_tol: expected a finite number >= 0"),
    ({"max_values": 0}, "max_values: expected an integer >= 1"),
])
def test_spec_errors(options: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError) as info:
        CompareSpec.build(**options)  # type: ignore[arg-type]
    assert message in str(info.value)


def test_spec_from_the_config_example() -> None:
    spec = CompareSpec.build(format="kserve-v1", paths=["$.predictions"], ignore=["$.id", "$.model_version"],
                             abs_tol=1.0e-6, rel_tol=1.0e-3)
    assert spec.format == "kserve-v1" and [p.text for p in spec.paths] == ["$.predictions"]
    assert (spec.abs_tol, spec.rel_tol, spec.max_values) == (1e-6, 1e-3, MAX_VALUES)


# ---- properties ----------------------------------------------------------------------------------

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda children: st.lists(children, max_size=6) | st.dictionaries(st.text(max_size=6), children, max_size=6),
    max_leaves=40,
)
# derandomize: the same examples on every run, so the suite cannot flake.
PROPERTY = settings(derandomize=True, deadline=None, max_examples=300)


@PROPERTY
@given(JSON, st.sampled_from(["json", "kserve-v1", "mlflow", "tfserving"]))
def test_a_document_agrees_with_itself(doc: object, format: str) -> None:
    wrapped = doc if format == "json" else {"predictions": doc}
    result = run(wrapped, wrapped, format)
    assert result.error is None and result.agree and result.label_agree in (None, True)
    assert all(result.fields.values())


@PROPERTY
@given(JSON, JSON, st.sampled_from(FORMATS))
def test_any_two_documents_compare_without_raising(live: object, shadow: object, format: str) -> None:
    result = run(live, shadow, format)
    assert result.agree is (result.error is None and all(result.fields.values()))
    assert result.text_similarity is None or 0.0 <= result.text_similarity <= 1.0


SSE_PIECES = st.sampled_from([b"data: ", b"data:", b"[DONE]", b":c", b"", b"\r", b"event: x", b"id: 1",
                               b'{"choices":[{"index":0,"delta":{"content":"x"}}]}', b'{"choices":[{"text":1}]}',
                               b'{"choices":[{"index":"0","delta":{}}]}', b'{"error":{}}', b"\xff"])
STREAMS = st.lists(SSE_PIECES | st.binary(max_size=8), max_size=12).map(b"\n".join)


@PROPERTY
@given(st.binary(max_size=200) | STREAMS, st.binary(max_size=200) | STREAMS, st.sampled_from(FORMATS),
       st.sampled_from(["", SSE]))
def test_arbitrary_bytes_never_raise(live: bytes, shadow: bytes, format: str, content_type: str) -> None:
    result = compare(live, shadow, CompareSpec.build(format=format), content_type)
    assert result.agree is (result.error is None and all(result.fields.values()))


@PROPERTY
@given(st.lists(st.text(max_size=6) | st.integers(min_value=0, max_value=10**6), max_size=6))
def test_field_names_parse_back(location: list[str | int]) -> None:
    expected = tuple(ANY if isinstance(part, int) else part for part in location)
    assert parse_path(field_name(location)).segments == expected


# ---- statistics ----------------------------------------------------------------------------------


def test_normal_quantile() -> None:
    assert normal_quantile(0.975) == pytest.approx(1.959963984540054, abs=1e-12)
    assert normal_quantile(0.5) == 0.0
    for bad in (0.0, 1.0, -0.1):
        with pytest.raises(ValueError):
            normal_quantile(bad)


@pytest.mark.parametrize(("k", "n", "confidence", "expected"), [
    (0, 10, 0.95, (0.0, 0.2775328)),  # the textbook rule-of-three neighbourhood
    (10, 10, 0.95, (0.7224672, 1.0)),
    (3, 10, 0.95, (0.1077913, 0.6032219)),
    (50, 100, 0.99, (0.3752796, 0.6247204)),
    (0, 0, 0.95, (0.0, 1.0)),
])
def test_wilson_interval(k: int, n: int, confidence: float, expected: tuple[float, float]) -> None:
    assert wilson_interval(k, n, confidence) == pytest.approx(expected, abs=1e-6)


def test_wilson_lower_bound_is_positive_exactly_when_k_is() -> None:
    assert wilson_interval(0, 10**9, 0.98)[0] == 0.0
    assert wilson_interval(1, 10**9, 0.98)[0] > 0.0
    with pytest.raises(ValueError):
        wilson_interval(3, 2)
    with pytest.raises(ValueError):
        wilson_interval(1, 2, 1.0)


def _fisher_by_counting(k1: int, n1: int, k2: int, n2: int) -> float:
    hits, total = k1 + k2, n1 + n2
    ways = [math.comb(hits, x) * math.comb(total - hits, n1 - x) for x in range(n1 + 1)]
    return sum(ways[k1:]) / sum(ways)


def test_fisher_matches_counting_tables() -> None:
    for n1 in range(8):
        for n2 in range(6):
            for k1 in range(n1 + 1):
                for k2 in range(n2 + 1):
                    assert fisher_exact_greater(k1, n1, k2, n2) == pytest.approx(
                        _fisher_by_counting(k1, n1, k2, n2), rel=1e-9, abs=1e-15)


def test_fisher_large_counts() -> None:
    assert fisher_exact_greater(300_000, 1_000_000, 15_000, 50_000) > 0.4  # equal rates
    assert fisher_exact_greater(300_000, 1_000_000, 14_000, 50_000) < 1e-15


@pytest.mark.parametrize(("counts", "verdict"), [
    ((300, 1000, 2, 100), "candidate"),  # 30% vs 2%
    ((300, 1000, 28, 100), "noise"),  # 30% vs 28%
    ((300, 1000, 0, 100), "candidate"),  # the primary never disagrees with itself
    ((0, 1000, 0, 100), "insufficient"),  # never disagrees: nothing to explain
    ((3, 1000, 0, 100), "insufficient"),  # rare, and no self-disagreement shown
    ((6, 20, 1, 3), "insufficient"),  # too few noise samples to call it noise
    ((20, 20, 0, 3), "candidate"),  # significance is valid at any size: p = 1/C(23, 3)
    ((5, 10, 0, 0), "insufficient"),
])
def test_classify_field(counts: tuple[int, int, int, int], verdict: str) -> None:
    assert classify_field(*counts) == verdict


def test_classify_field_rejects_bad_counts() -> None:
    with pytest.raises(ValueError):
        classify_field(5, 4, 0, 10)
    with pytest.raises(ValueError):
        classify_field(1, 4, 0, 10, alpha=0.0)


def _response(rng: random.Random, candidate: bool, x: float) -> bytes:
    # `token` is sampled, so the primary disagrees with itself 2/3 of the time; the candidate
    # samples the same way but also shifts `score` on 30% of requests.
    score = x + 0.01 if candidate and rng.random() < 0.3 else x
    return body({"predictions": [{"token": rng.choice("abc"), "score": score}]})


def test_noise_classification_on_simulated_traffic() -> None:
    rng = random.Random(20240601)
    spec = CompareSpec.build(format="kserve-v1")
    n_cand, n_noise = 4000, 200  # noise_percent = 5
    mismatches = {"cand": Counter[str](), "noise": Counter[str]()}
    for kind, n in (("cand", n_cand), ("noise", n_noise)):
        for _ in range(n):
            x = rng.random()
            result = compare(_response(rng, False, x), _response(rng, kind == "cand", x), spec)
            mismatches[kind].update(f for f, ok in result.fields.items() if not ok)
    verdict = {f: classify_field(mismatches["cand"][f], n_cand, mismatches["noise"][f], n_noise, alpha=1e-4)
               for f in ("$.predictions[*].token", "$.predictions[*].score", "$.predictions")}
    # Certain for practical purposes, whatever the seed: for `token` both rates are 2/3, so a
    # false "candidate" needs p < 1e-4 (probability 1e-4), and k_noise = 0 has probability
    # (1/3)^200. For `score`, 1200 of 4000 against 0 of 200 gives p ~ 0.7^200 ~ 1e-31.
    # With 10 noise samples, neither field can be called noise.
    assert verdict == {"$.predictions[*].token": "noise", "$.predictions[*].score": "candidate",
                       "$.predictions": "insufficient"}
    few = classify_field(mismatches["cand"]["$.predictions[*].token"], n_cand, 7, 10, alpha=1e-4)
    assert few == "insufficient"


# ---- reading JSON: the scanner fast path answers as json.loads does -------------------------------

JSON_BODIES = [b'{"a": 1}', b'[1, 2] \n\t', b'{"a": 1} x', b'{"a":', b'\xef\xbb\xbf{"a": 1}', b'{"a": "\xff"}', b"[",
               b"[NaN, -Infinity]", b'{"a": 1e400}', b'{"a": "\\ud800"}', b' {"a": 1}', '{"a": 1}'.encode("utf-16"),
               b"[1]\x0c", b'{"a": 1}\n\n', b"[" * 100_000 + b"]" * 100_000, b'"text"', b"{}", b"[]", b"{\x00}"]


def _as_json_loads_reads(raw: bytes) -> tuple[str, str]:
    """('ok', the document re-encoded) or ('error', the message _load_json must give)."""
    try:
        return "ok", json.dumps(json.loads(raw))
    except RecursionError:
        return "error", "body is not usable JSON: nested too deeply"
    except ValueError as exc:
        return "error", f"body is not JSON: {exc}"


def _as_load_json_reads(raw: bytes) -> tuple[str, str]:
    try:
        return "ok", json.dumps(_load_json(raw))
    except ExtractionError as exc:
        return "error", str(exc)


@pytest.mark.parametrize("raw", JSON_BODIES, ids=lambda raw: repr(raw[:16]))
def test_json_bodies_read_as_json_loads_reads_them(raw: bytes) -> None:
    assert _as_load_json_reads(raw) == _as_json_loads_reads(raw)


_JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=20)


@settings(max_examples=300, deadline=None)
@given(doc=_JSON_VALUES, indent=st.sampled_from([None, 0, 2]), tail=st.sampled_from(["", " ", "\n", "\t\r\n", " x", ","]),
       ascii_only=st.booleans())
def test_any_json_document_reads_as_json_loads_reads_it(doc: object, indent: int | None, tail: str,
                                                        ascii_only: bool) -> None:
    raw = (json.dumps(doc, indent=indent, ensure_ascii=ascii_only) + tail).encode("utf-8", "surrogatepass")
    assert _as_load_json_reads(raw) == _as_json_loads_reads(raw)


@settings(max_examples=300, deadline=None)
@given(raw=st.binary(max_size=40).map(lambda b: b"{" + b) | st.binary(max_size=40).map(lambda b: b"[" + b))
def test_any_bytes_opening_like_json_read_as_json_loads_reads_them(raw: bytes) -> None:
    assert _as_load_json_reads(raw) == _as_json_loads_reads(raw)


def test_the_remembered_key_names_and_kinds_stay_bounded() -> None:
    for i in range(_SEGMENTS_MAX + 10):
        assert field_name((f"k{i}", 0, "x y")) == f"$.k{i}[*]['x y']"
    assert len(_SEGMENTS) <= _SEGMENTS_MAX
    for i in range(_KEY_KINDS_MAX + 10):
        _key_kinds(f"scores_{i}")
    assert len(_KEY_KINDS) <= _KEY_KINDS_MAX
    assert _key_kinds("class_ids") == (True, False) and _key_kinds("probabilities") == (False, True)
