"""Pure parts of issue 15's fixes, by tables: decoding, extraction reasons, per-instance agreement,
error shapes, mirrored paths, the new config keys and the 4xx accounting of rollout windows."""

from __future__ import annotations

import gzip
import json
import zlib
from typing import Any

import brotli
import pytest
import zstandard

from router.analysis.compare import DECODED_TOO_LARGE, CompareSpec, InstanceCounts, compare
from router.analysis.decoding import DecodeError, decode
from router.analysis.instances import compare_instances
from router.analysis.protocols import default_mirror_paths, protocol_of_path
from router.config import ConfigError, parse_config
from router.control.shadowstats import ClusteredRate
from router.control.window import WindowCounters
from router.dataplane.http11 import error_body

DOC = json.dumps({"predictions": [{"label": "a", "scores": [0.9, 0.1]}] * 50}).encode()
ENCODERS = {"gzip": lambda b: gzip.compress(b), "x-gzip": lambda b: gzip.compress(b), "deflate": zlib.compress,
            "br": brotli.compress, "zstd": zstandard.ZstdCompressor().compress}


@pytest.mark.parametrize("encoding", sorted(ENCODERS))
def test_each_coding_decodes_and_is_bounded(encoding: str) -> None:
    packed = ENCODERS[encoding](DOC)
    assert decode(packed, encoding.upper(), len(DOC)) == DOC
    with pytest.raises(DecodeError) as info:
        decode(packed, encoding, len(DOC) - 1)
    assert info.value.reason == "too_large"


def test_codings_in_layers_raw_deflate_and_failures() -> None:
    assert decode(gzip.compress(brotli.compress(DOC)), "br, gzip", 10**6) == DOC
    assert decode(DOC, "identity", 10) == DOC  # nothing to undo, nothing to bound here
    assert decode(zlib.compress(DOC)[2:-4], "deflate", 10**6) == DOC  # raw deflate, as some servers send
    bomb = gzip.compress(b"0" * (64 * 1024 * 1024))
    with pytest.raises(DecodeError, match="more than 1048576"):
        decode(bomb, "gzip", 1024 * 1024)
    for body, encoding, reason in ((b"garbage", "gzip", "corrupt"), (gzip.compress(DOC)[:40], "gzip", "corrupt"),
                                   (b"\xff" * 20, "br", "corrupt"), (b"x", "compress", "unsupported_encoding")):
        with pytest.raises(DecodeError) as info:
            decode(body, encoding, 10**6)
        assert info.value.reason == reason, (encoding, body[:10])


V1 = CompareSpec.build(format="kserve-v1")


@pytest.mark.parametrize(("live", "shadow", "reason"), [
    (b"not json", b"{}", "not_json"),
    (b'{"predictions": [1]}', b'{"error": "model not loaded"}', "error_response"),
    (b'{"predictions": [1]}', b'{"outputs": []}', "missing_output"),
    (b'{"predictions": [1]}', b"[1]", "unexpected_shape"),
])
def test_extraction_failures_carry_a_reason(live: bytes, shadow: bytes, reason: str) -> None:
    result = compare(live, shadow, V1)
    assert result.error is not None and result.error_reason == reason


def test_compressed_pairs_compare_like_plain_ones() -> None:
    plain = compare(DOC, DOC, V1)
    packed = compare(gzip.compress(DOC), zstandard.ZstdCompressor().compress(DOC), V1, live_encoding="gzip",
                     shadow_encoding="zstd")
    assert packed == plain and packed.agree
    too_big = compare(gzip.compress(DOC), DOC, V1, live_encoding="gzip", max_decoded=100)
    assert too_big.error_reason == DECODED_TOO_LARGE


def v2(predict: list[int], proba: list[list[float]]) -> bytes:
    return json.dumps({"outputs": [
        {"name": "predict", "shape": [len(predict), 1], "datatype": "INT64", "data": predict},
        {"name": "predict_proba", "shape": [len(proba), 2], "datatype": "FP64", "data": [v for row in proba for v in row]}]}).encode()


@pytest.mark.parametrize(("spec", "live", "shadow", "expected", "label_agree"), [
    # ten rows, one label differs: the request disagrees, nine instances agree
    (CompareSpec.build(format="kserve-v1"), json.dumps({"predictions": [1] * 10}).encode(),
     json.dumps({"predictions": [1] * 9 + [0]}).encode(), InstanceCounts(10, 9, 10, 9), False),
    # probabilities differ in their digits only: every label agrees, no field does
    (CompareSpec.build(format="open-inference-v2"), v2([1, 0, 1], [[0.2, 0.8], [0.7, 0.3], [0.4, 0.6]]),
     v2([1, 0, 1], [[0.21, 0.79], [0.69, 0.31], [0.41, 0.59]]), InstanceCounts(3, 0, 3, 3), True),
    # a row on one side only disagrees
    (CompareSpec.build(format="kserve-v1"), json.dumps({"predictions": ["a", "b"]}).encode(),
     json.dumps({"predictions": ["a"]}).encode(), InstanceCounts(2, 1, 2, 1), False),
    (CompareSpec.build(format="json"), b"[1, 2]", b"[1, 3]", InstanceCounts(2, 1, 0, 0), None),
    (CompareSpec.build(format="json"), b'{"a": 1}', b'{"a": 1}', None, None),  # no batch
])
def test_per_instance_agreement(spec: CompareSpec, live: bytes, shadow: bytes, expected: InstanceCounts | None,
                                label_agree: bool | None) -> None:
    result = compare_instances(live, shadow, spec)
    assert result.error is None and result.instances == expected and result.label_agree == label_agree


def test_clustered_rate_uses_the_request_as_its_unit() -> None:
    rows, requests = ClusteredRate(), ClusteredRate()
    for k in [10] * 18 + [0] * 2:  # whole requests agree or not: rows carry no extra information
        rows.add(k, 10)
    for k in [1] * 18 + [0] * 2:
        requests.add(k, 1)
    a, b = rows.report(0.95), requests.report(0.95)
    assert a is not None and b is not None and a["rate"] == b["rate"] == 0.9
    assert a["high"] - a["low"] == pytest.approx(b["high"] - b["low"])  # not ten times the evidence
    assert a["unit"] == "request" and a["requests"] == 20 and a["n"] == 200
    assert ClusteredRate().report(0.95) is None


@pytest.mark.parametrize(("protocol", "expected"), [
    ("open-inference-v2", {"error": "no route"}),
    ("kserve-v1", {"error": "no route"}),
    ("tfserving", {"error": "no route"}),
    ("openai", {"error": {"message": "no route", "type": "invalid_request_error", "code": "not_found", "param": None}}),
    (None, {"error": {"status": 404, "reason": "Not Found", "message": "no route", "request_id": "r1"}}),
    ("json", {"error": {"status": 404, "reason": "Not Found", "message": "no route", "request_id": "r1"}}),
])
def test_error_bodies_per_protocol(protocol: str | None, expected: dict[str, Any]) -> None:
    assert json.loads(error_body(404, "no route", b"r1", protocol)) == expected


@pytest.mark.parametrize(("path", "protocol"), [
    ("/v2/models/m/infer", "open-inference-v2"), ("/v2/health/ready", "open-inference-v2"),
    ("/v1/models/m:predict", "kserve-v1"), ("/v1/chat/completions?x=1", "openai"), ("/invocations", "mlflow"),
    ("/predict", None), ("/v1/models/m", None),
])
def test_protocol_of_path(path: str, protocol: str | None) -> None:
    assert protocol_of_path(path) == protocol


@pytest.mark.parametrize(("protocol", "mirrored", "not_mirrored"), [
    ("open-inference-v2", ["/v2/models/m/infer", "/gw/v2/models/m/versions/2/infer"],
     ["/v2/repository/models/m/unload", "/v2/models/m/ready", "/v2/models/m"]),
    ("kserve-v1", ["/v1/models/m:predict"], ["/v1/models/m", "/v1/models/m:explain"]),
    ("openai", ["/v1/chat/completions", "/v1/embeddings"], ["/v1/models", "/v1/files"]),
    ("mlflow", ["/invocations"], ["/ping", "/version"]),
    (None, ["/anything", "/predict"], ["/v2/repository/index"]),
])
def test_default_mirrored_paths(protocol: str | None, mirrored: list[str], not_mirrored: list[str]) -> None:
    paths = default_mirror_paths(protocol)
    assert all(paths.mirrors(p) for p in mirrored) and not any(paths.mirrors(p) for p in not_mirrored)


BASE = ("listen: 127.0.0.1:1\nbackends: {a: {url: 'http://h:1'}, b: {url: 'http://h:2'}}\n"
        "routes: [{name: r, match: {path_prefix: /}, primary: a, %s}]\n")


def test_new_route_keys_parse() -> None:
    cfg = parse_config(BASE % "protocol: openai, prediction: scores, shadow: {backend: b, paths: ['/x/*'], "
                              "compare: {format: kserve-v1, agree: labels}}, candidate: b, "
                              "rollout: {count_4xx: true}")
    route = cfg.routes[0]
    assert route.protocol == "openai" and route.prediction == "scores" and route.rollout is not None
    assert route.rollout.count_4xx and route.shadow is not None and route.shadow.compare.agree == "labels"
    assert route.shadow.paths.mirrors("/x/y/z") and not route.shadow.paths.mirrors("/y")
    derived = parse_config(BASE % "shadow: {backend: b, compare: {format: open-inference-v2}}").routes[0]
    assert derived.protocol == "open-inference-v2" and derived.shadow is not None
    assert not derived.shadow.paths.mirrors("/v2/models/m/ready")
    plain = parse_config(BASE % "shadow: {backend: b}").routes[0]
    assert plain.protocol is None and plain.prediction == "auto" and plain.shadow is not None
    assert plain.shadow.paths.mirrors("/anything")


@pytest.mark.parametrize(("snippet", "message"), [
    ("protocol: grpc", "routes[0].protocol: must be one of kserve-v1"),
    ("prediction: probability", "routes[0].prediction: must be one of auto, label, scores, value"),
    ("shadow: {backend: b, paths: ['x/*']}", "routes[0].shadow.paths: [0]: a path pattern starts with '/'"),
    ("shadow: {backend: b, compare: {agree: rows}}", "routes[0].shadow.compare.agree: must be one of fields, labels"),
    ("candidate: b, rollout: {count_4xx: 2}", "routes[0].rollout.count_4xx"),
])
def test_new_route_keys_errors(snippet: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(BASE % snippet, "t.yaml")
    assert message in str(info.value) and str(info.value).startswith("t.yaml:")


def test_client_errors_are_reported_apart_from_server_errors() -> None:
    key = ("v1", "v2")
    live = WindowCounters(key, False, 0.0)
    for status in (200, 422, 404, 503):
        live.live("v2", status, 0.01)
    assert (live.candidate.requests, live.candidate.errors, live.candidate.client_errors) == (4, 1, 2)
    opted = WindowCounters(key, False, 0.0, count_4xx=True)
    for status in (200, 422, 503):
        opted.live("v2", status, 0.01)
    assert (opted.candidate.errors, opted.candidate.client_errors) == (2, 1)
    shadowed = WindowCounters(key, True, 0.0)
    shadowed.pair(422, None, 0.01, 422, None, 0.01)
    assert shadowed.candidate.errors == 0 and shadowed.candidate.client_errors == 1
    restored = WindowCounters.from_json(key, 0.0, json.loads(json.dumps(shadowed.to_json())))
    assert restored.candidate.client_errors == 1 and restored.primary.client_errors == 1
