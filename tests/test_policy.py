"""Backend choice as pure functions: overrides, sticky buckets, weighted draws."""

from __future__ import annotations

import hashlib
import itertools
import math
import random

import pytest

from router.config import parse_config
from router.dataplane.policy import RequestView, assign, bucket, choose

YAML = """
listen: 127.0.0.1:8080
backends:
  v1: {url: "http://127.0.0.1:9001"}
  v2: {url: "http://127.0.0.1:9002"}
routes:
  - name: fraud
    match: {path_prefix: /v1/models/fraud}
    primary: v1
    candidate: v2
    split: {candidate_percent: 10, sticky: header:X-User-Id}
    overrides:
      - match: {headers: {X-Model-Version: v2}}
        backend: v2
      - match: {query: {model: v1}}
        backend: v1
      - match: {cookies: {pin: old}}
        backend: v1
  - name: plain
    match: {path_prefix: /plain}
    primary: v1
    candidate: v2
    split: {candidate_percent: 10}
"""
CONFIG = parse_config(YAML)
FRAUD, PLAIN = CONFIG.routes


def view(headers: dict[str, str] | None = None, query: str = "") -> RequestView:
    lowered = {k.lower(): v for k, v in (headers or {}).items()}
    return RequestView(lowered.get, query)


def test_split_accuracy_over_100k_draws() -> None:
    # Fixed seed: deterministic. With a fresh seed the share would still lie within the bound
    # 3.2 standard deviations wide (binomial sd at n=100k, p=0.1 is 0.095 points).
    draw = random.Random(20261124).random
    n = 100_000
    hits = sum(choose(PLAIN, 10.0, view(), draw).backend == "v2" for _ in range(n))
    sd = math.sqrt(0.1 * 0.9 / n)
    assert abs(hits / n - 0.10) <= 0.003
    assert 0.003 / sd > 3  # the tolerance is more than three standard deviations


@pytest.mark.parametrize(("percent", "expected"), [(0, "v1"), (100, "v2")])
def test_blue_green_extremes_never_draw(percent: float, expected: str) -> None:
    def never() -> float:
        raise AssertionError("0 and 100 percent must not draw")

    assert all(choose(PLAIN, percent, view(), never).backend == expected for _ in range(100))


def test_sticky_is_deterministic_and_salted() -> None:
    keys = [f"user-{i}" for i in range(2000)]
    first = [bucket("fraud", k) for k in keys]
    assert first == [bucket("fraud", k) for k in keys]
    assert first != [bucket("other-salt", k) for k in keys]
    assert all(0 <= b < 100 for b in first)
    # the documented hash, computed independently: the same on every host and Python version
    digest = hashlib.blake2b(b"user-1", digest_size=8, key=b"fraud").digest()
    assert bucket("fraud", "user-1") == int.from_bytes(digest, "big") * 100.0 / 2**64


def test_ramp_only_moves_keys_towards_the_candidate() -> None:
    keys = [f"user-{i}" for i in range(5000)]
    on_candidate = {p: {k for k in keys if assign(FRAUD, p, k) == "v2"} for p in (0, 0.5, 5, 25, 50, 100)}
    steps = sorted(on_candidate)
    for low, high in itertools.pairwise(steps):
        assert on_candidate[low] <= on_candidate[high]
    assert on_candidate[0] == set() and on_candidate[100] == set(keys)
    assert abs(len(on_candidate[25]) / len(keys) - 0.25) < 0.03


def test_sticky_route_uses_key_and_counts_missing() -> None:
    def no_draw() -> float:
        raise AssertionError("a sticky key must not draw")

    for i in range(200):
        key = f"u{i}"
        c = choose(FRAUD, 10, view({"X-User-Id": key}), no_draw)
        assert c.backend == assign(FRAUD, 10, key) and c.reason == "sticky" and not c.key_missing
    c = choose(FRAUD, 10, view(), lambda: 0.05)
    assert c.backend == "v2" and c.reason == "random" and c.key_missing


@pytest.mark.parametrize(("headers", "query", "percent", "expected"), [
    ({"X-Model-Version": "v2"}, "", 0, "v2"),         # QA forces the new model
    ({}, "model=v1", 100, "v1"),                        # a tenant held on the old one
    ({"Cookie": "pin=old; a=b"}, "", 100, "v1"),
    ({"X-Model-Version": "v3"}, "", 0, "v1"),          # no override matches: the split decides
    ({"Cookie": "garbage=\"unterminated"}, "", 0, "v1"),  # a bad cookie header is no match, not an error
])
def test_overrides_come_before_the_split(headers: dict[str, str], query: str, percent: float, expected: str) -> None:
    assert choose(FRAUD, percent, view(headers, query), lambda: 0.0).backend == expected


def test_prefix_matches_at_boundaries_and_first_route_wins() -> None:
    from router.dataplane.table import RoutingTable

    routes = "\n".join(
        f"  - {{name: r{i}, match: {{path_prefix: /v1/models/m{i}}}, primary: v1}}" for i in range(1000))
    text = YAML.split("routes:")[0] + "routes:\n" + routes + "\n  - {name: all, match: {path_prefix: /}, primary: v2}\n"
    table = RoutingTable(parse_config(text))
    none = {}.get
    for path, expected in [("/v1/models/m777:predict", "r777"), ("/v1/models/m7:predict", "r7"),
                           ("/v1/models/m7", "r7"), ("/v1/models/m7/infer", "r7"), ("/v1/models/m7x", "all"),
                           ("/other", "all")]:
        route = table.match("POST", path, none)
        assert route is not None and route.name == expected, path
        again = table.match("POST", path, none)  # from the remembered candidates this time
        assert again is route, path


def test_remembered_paths_are_bounded_and_change_nothing() -> None:
    """The table remembers which routes a path may match for the first paths it sees; a scan of
    many more paths is matched afresh, with the same answers, and memory stays bounded."""
    from router.dataplane import table as table_module

    text = YAML.split("routes:")[0] + ("routes:\n  - {name: a, match: {path_prefix: /v1/models/a}, primary: v1}\n"
                                        "  - {name: all, match: {path_prefix: /}, primary: v2}\n")
    table = table_module.RoutingTable(parse_config(text))
    none = {}.get
    limit = table_module._PATHS_REMEMBERED
    for i in range(limit + 50):
        path = f"/v1/models/a/{i}" if i % 2 else f"/scan/{i}"
        route = table.match("POST", path, none)
        assert route is not None and route.name == ("a" if i % 2 else "all"), path
    assert len(table._seen) == limit
    late = table.match("GET", f"/v1/models/a/{limit + 49}", none)  # not remembered: found all the same
    assert late is not None and late.name == "a"
