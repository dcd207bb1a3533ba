"""Whatever text the config file holds, validation ends in a Config or a ConfigError with places.

Never a traceback: `model-router validate` and reload both rely on every problem being reported
as a ConfigError whose issues name a line.
"""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from router.config import Config, ConfigError, parse_config

# Derandomized: the same examples every run, so a failure here is a finding, not a flake.
FUZZ = settings(max_examples=300, deadline=None, database=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow])

SCHEMA_KEYS = [
    "listen", "admin", "token_env", "state_dir", "limits", "proxy", "backends", "routes", "url", "urls",
    "max_connections", "max_pending", "health", "outlier", "path", "interval", "timeout", "unhealthy_after",
    "healthy_after", "consecutive_failures", "base_ejection", "max_ejection", "name", "match", "path_prefix",
    "path_regex", "methods", "headers", "primary", "candidate", "split", "candidate_percent", "sticky", "salt",
    "overrides", "backend", "query", "cookies", "retries", "shadow", "percent", "max_concurrency", "max_body",
    "max_response", "compare", "format", "paths", "ignore", "abs_tol", "rel_tol", "noise_percent", "rollout",
    "steps", "min_samples", "max_duration", "gates", "confidence", "on_failure", "on_timeout", "approval",
    "notify", "min_agreement", "max_latency_ratio", "max_error_rate_increase", "min_accuracy_delta",
    "connect_timeout", "request_timeout", "drain_timeout", "header_timeout", "idle_timeout", "max_header_size",
    "max_headers", "backend_header", "via", "trusted_hops",
]
LIMIT_KEYS = ["max_body", "connect_timeout", "request_timeout", "drain_timeout", "header_timeout", "idle_timeout",
              "max_header_size", "max_headers", "max_connections"]
INTERESTING = [
    "127.0.0.1:8080", "[::1]:9901", "0.0.0.0:99999", "localhost:", ":80", "http://127.0.0.1:9000",
    "https://[::1]:8443", "http://user@h:1/p", "ftp://x", "http://h:notaport", "500ms", "2s", "5m", "1h", "0s",
    "1e3s", "10MiB", "512KiB", "1GiB", "0B", "1" * 400 + "KiB", "9" * 40 + "h", "-1", "0", "header:x-user",
    "cookie:uid", "query:k", "client", "header:", "header:bad name", "json", "kserve-v1", "openai-chat", "text",
    "$.predictions[*].label", "$[", "rollback", "pause", "GET", "post", "TRACE", "/v1", "v1", "", " ", "(", "[a-",
    "~", "null", ".nan", ".inf", "-.inf", "yes", "2001-12-14", "0x1F", "0o17", "1_000",
]
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(-2, 200),
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from(INTERESTING), st.text(max_size=20),
)
keys = st.one_of(st.sampled_from(SCHEMA_KEYS), st.sampled_from(SCHEMA_KEYS), st.text(max_size=12), st.integers(),
                 st.booleans(), st.none())
trees = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                      st.dictionaries(keys, inner, max_size=5)), max_leaves=30)
loose = st.dictionaries(st.sampled_from(SCHEMA_KEYS), trees, max_size=8)


def _maybe(value: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(value, trees)


def _route() -> st.SearchStrategy[Any]:
    match = st.fixed_dictionaries({}, optional={"path_prefix": _maybe(st.just("/v1")), "path": trees,
                                                "path_regex": _maybe(st.sampled_from(["^/a", "(", "/x+"])),
                                                "methods": _maybe(st.just(["GET", "POST"])), "headers": trees})
    compare = st.fixed_dictionaries({}, optional={"format": _maybe(st.sampled_from(["json", "kserve-v1", "text"])),
                                                  "paths": trees, "ignore": trees, "abs_tol": trees,
                                                  "rel_tol": trees, "noise_percent": trees})
    shadow = st.fixed_dictionaries({"backend": _maybe(st.just("b2"))},
                                   optional={"percent": trees, "compare": _maybe(compare), "methods": trees,
                                             "max_body": trees, "timeout": trees, "max_concurrency": trees})
    rollout = st.fixed_dictionaries({}, optional={"steps": _maybe(st.lists(st.floats(), max_size=4)),
                                                  "interval": trees, "min_samples": trees, "gates": trees,
                                                  "max_duration": trees, "confidence": trees, "on_failure": trees,
                                                  "approval": trees, "notify": trees})
    return st.fixed_dictionaries(
        {"name": _maybe(st.sampled_from(["m", "r-1", "bad name"])), "match": _maybe(match),
         "primary": _maybe(st.sampled_from(["b1", "b2", "nope"]))},
        optional={"candidate": _maybe(st.sampled_from(["b1", "b2"])), "split": trees, "overrides": trees,
                  "timeout": trees, "retries": trees, "shadow": _maybe(shadow), "rollout": _maybe(rollout)})


def _backend() -> st.SearchStrategy[Any]:
    return st.fixed_dictionaries({}, optional={"url": _maybe(st.just("http://127.0.0.1:9000")), "urls": trees,
                                               "max_connections": trees, "max_pending": trees, "health": trees,
                                               "outlier": trees})


shaped = st.fixed_dictionaries(
    {"listen": _maybe(st.just("127.0.0.1:8080")),
     "backends": _maybe(st.dictionaries(st.sampled_from(["b1", "b2", "bad name", ""]), _maybe(_backend()),
                                        max_size=3)),
     "routes": _maybe(st.lists(_maybe(_route()), max_size=3))},
    optional={"admin": trees, "limits": _maybe(st.dictionaries(st.sampled_from(LIMIT_KEYS), trees)),
              "proxy": trees, "state_dir": trees},
)

YAML_FRAGMENTS = [
    "listen: ", "backends:\n", "routes:\n", "  - ", "  ", "    ", "name: m", "match: {path_prefix: /}", "&a ",
    "*a", "*nope", "!!python/object:os.system ", "!custom ", "!!binary ", "!!timestamp ", "!!float ", "!!int ",
    "!!set ", "!!omap ", "? ", ": ", "- ", "[", "]", "{", "}", ",", "'", '"', "|\n", ">-\n", "#", "%YAML 1.1\n",
    "---\n", "...\n", "<<: *a\n", "\t", "\n", "\r\n", "\x00", "\ufeff", "@", "`", "0x", "1e999", "~",
]
yaml_soup = st.lists(st.one_of(st.sampled_from(YAML_FRAGMENTS), st.text(max_size=8)), max_size=30).map("".join)


def check(text: str) -> None:
    try:
        config = parse_config(text, "fuzz.yaml")
    except ConfigError as exc:
        assert exc.issues, "a ConfigError without issues"
        for issue in exc.issues:
            assert issue.line >= 1, issue
            assert issue.message.strip(), issue
        return
    assert isinstance(config, Config)


def dump(tree: Any) -> str:
    return yaml.safe_dump(tree, sort_keys=False, allow_unicode=True)


@FUZZ
@given(loose)
def test_any_yaml_tree_with_schema_keys_gives_config_or_config_error(tree: Any) -> None:
    check(dump(tree))


@FUZZ
@given(shaped)
def test_nearly_valid_configs_give_config_or_config_error(tree: Any) -> None:
    check(dump(tree))


@FUZZ
@given(yaml_soup)
def test_yaml_syntax_soup_gives_config_or_config_error(text: str) -> None:
    check(text)


@FUZZ
@given(st.text())
def test_random_unicode_text_gives_config_or_config_error(text: str) -> None:
    check(text)


@FUZZ
@given(st.binary())
def test_random_bytes_give_config_or_config_error(data: bytes) -> None:
    check(data.decode("latin-1"))


VALID = ("listen: 127.0.0.1:8080\nbackends: {b: {url: 'http://127.0.0.1:9000'}}\n"
         "routes: [{name: m, match: {path_prefix: /}, primary: b}]\n")
HOSTILE = {
    "bare-equals-sign": "=",
    "merge-key-at-top": "<<: 1",
    "unknown-local-tag": "listen: !custom x",
    "python-object-tag": "listen: !!python/object:os.system x",
    "empty-float-tag": "!!float ",
    "empty-int-tag": "!!int ",
    "empty-timestamp-tag": "!!timestamp ",
    "unparsable-float-tag": "listen: !!float x",
    "bad-base64-binary": VALID.replace("primary: b", "primary: !!binary zz"),
    "size-overflowing-float": VALID + "limits: {max_body: %sKiB}" % ("1" * 400),
    "nested-flow-lists-1000": "listen: 127.0.0.1:1\nbackends: " + "[" * 1000 + "]" * 1000,
    "nested-flow-maps-1000": "listen: 127.0.0.1:1\nbackends: " + "{a: " * 1000 + "x" + "}" * 1000,
    "nested-flow-lists-5000": "listen: 127.0.0.1:1\nbackends: " + "[" * 5000 + "]" * 5000,
}


@pytest.mark.parametrize("text", HOSTILE.values(), ids=HOSTILE.keys())
def test_hostile_config_text_gives_config_error(text: str) -> None:
    check(text)
