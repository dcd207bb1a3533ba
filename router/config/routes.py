"""Readers for `routes:`: match, split, overrides, shadow, rollout and gates, LLM fallback."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import yaml

from router.analysis.compare import CompareSpec
from router.analysis.decision import Action, Gates, RolloutPolicy
from router.analysis.protocols import PROTOCOLS, MirrorPaths, default_mirror_paths, mirror_paths
from router.analysis.rollout_types import LATENCY_TESTS
from router.config.llmconfig import JudgeConfig, read_judge, read_models
from router.config.types import (
    PREDICTION_KINDS,
    Match,
    Override,
    OverrideMatch,
    RolloutConfig,
    RouteConfig,
    ShadowConfig,
    Split,
    StickyKey,
)
from router.config.units import parse_duration, parse_size
from router.config.yamlsrc import Reader, join

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^`|~0-9A-Za-z-]+$")
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


_ROUTE_KEYS = frozenset({"name", "match", "primary", "candidate", "split", "overrides", "timeout", "retries",
                         "shadow", "rollout", "protocol", "prediction", "fallback",
                         "first_token_timeout"})


def _routes(r: Reader, node: yaml.Node, backends: frozenset[str]) -> tuple[RouteConfig, ...] | None:
    items = r.sequence(node, "routes")
    if items is None:
        return None
    if not items:
        r.error(node, "routes", "define at least one route")
    routes: list[RouteConfig] = []
    seen: dict[str, int] = {}
    ok = True
    for i, item in enumerate(items):
        name = _peek_name(item)
        if name is not None and name in seen:
            first = f"first at routes[{seen[name]}]"
            r.error(item, join(join("routes", i), "name"), f"duplicate route name {name!r} ({first})")
            ok = False
        elif name is not None:
            seen[name] = i
        route = _route(r, item, join("routes", i), backends)
        if route is None:
            ok = False
        else:
            routes.append(route)
    return tuple(routes) if ok else None


def _peek_name(node: yaml.Node) -> str | None:
    """A route's name before validation, so duplicates are found even in broken routes."""
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            if isinstance(k, yaml.ScalarNode) and k.value == "name" and isinstance(v, yaml.ScalarNode):
                return str(v.value)
    return None


def _backend_ref(r: Reader, node: yaml.Node, path: str, backends: frozenset[str]) -> str | None:
    name = r.string(node, path)
    if name is not None and name not in backends:
        known = ", ".join(sorted(backends)) or "none"
        r.error(node, path, f"unknown backend {name!r} (defined: {known})")
        return None
    return name


def _route(r: Reader, node: yaml.Node, path: str, backends: frozenset[str]) -> RouteConfig | None:
    m = r.mapping(node, path, _ROUTE_KEYS)
    if m is None:
        return None
    for key in ("name", "match", "primary"):
        if key not in m:
            r.error(node, join(path, key), "required key is missing")
    before = len(r.issues)
    name = r.get(m, "name", path, r.string, None)
    if name is not None and not _NAME.match(name):
        r.error(m["name"], join(path, "name"), "route names are letters, digits, '.', '_' or '-' (max 63)")
    match = _match(r, m["match"], join(path, "match")) if "match" in m else None
    primary = r.get(m, "primary", path, lambda n, p: _backend_ref(r, n, p, backends), None)
    candidate = r.get(m, "candidate", path, lambda n, p: _backend_ref(r, n, p, backends), None)
    if candidate is not None and candidate == primary:
        r.error(m["candidate"], join(path, "candidate"), "must differ from primary")
    split = _split(r, m["split"], join(path, "split"), name or "") if "split" in m else Split(salt=name or "")
    if split and split.candidate_percent > 0 and "candidate" not in m:
        r.error(m["split"], join(path, "split.candidate_percent"), "a split needs a candidate backend")
    overrides = _overrides(r, m["overrides"], join(path, "overrides"), backends) if "overrides" in m else ()
    timeout = r.get(m, "timeout", path, lambda n, p: r.converted(n, p, parse_duration), None)
    protocol = r.get(m, "protocol", path, _choice(r, PROTOCOLS), None)
    prediction = r.get(m, "prediction", path, _choice(r, PREDICTION_KINDS), "auto")
    shadow = _shadow(r, m["shadow"], join(path, "shadow"), backends, protocol) if "shadow" in m else None
    if shadow is not None and shadow.backend == primary:
        r.error(m["shadow"], join(path, "shadow.backend"), "must differ from primary (mirror to another model)")
    rollout = _rollout(r, m["rollout"], join(path, "rollout")) if "rollout" in m else None
    if "rollout" in m and "candidate" not in m:
        r.error(m["rollout"], join(path, "rollout"), "a rollout needs a candidate backend")
    if len(r.issues) > before or not (name and match and primary and split) or overrides is None:
        return None
    retries = r.get(m, "retries", path, r.integer, 1)
    if retries is not None and not 0 <= retries <= 5:
        r.error(m["retries"], join(path, "retries"), "must be within 0..5")
    fallback = _fallback(r, m, path, backends, primary)
    first_token = r.get(m, "first_token_timeout", path, lambda n, p: r.converted(n, p, parse_duration), None)
    if first_token is not None and not fallback:
        r.error(m["first_token_timeout"], join(path, "first_token_timeout"), "needs a fallback list to fall back to")
    if len(r.issues) > before or retries is None or fallback is None:
        return None
    if protocol is None and shadow is not None and shadow.compare.format != "json":
        protocol = shadow.compare.format
    return RouteConfig(name, match, primary, candidate, split, overrides, timeout, retries, shadow, rollout,
                       protocol, prediction or "auto", fallback, first_token)  # type: ignore[arg-type]


def _fallback(r: Reader, m: dict[str, yaml.Node], path: str, backends: frozenset[str],
              primary: str) -> tuple[str, ...] | None:
    if "fallback" not in m:
        return ()
    p = join(path, "fallback")
    items = r.sequence(m["fallback"], p)
    if items is None:
        return None
    names = [_backend_ref(r, item, join(p, i), backends) for i, item in enumerate(items)]
    if None in names:
        return None
    if not names or len(set(names)) != len(names):
        r.error(m["fallback"], p, "give one or more distinct backends")
        return None
    return tuple(n for n in names if n is not None)


_ROLLOUT_KEYS = frozenset({"steps", "interval", "min_samples", "max_duration", "gates", "confidence", "on_failure",
                           "on_timeout", "approval", "notify", "count_4xx"})
_GATE_KEYS = ("min_agreement", "max_latency_ratio", "max_error_rate_increase", "min_accuracy_delta",
              "max_ttft_ratio", "max_tpot_ratio", "min_judge_win_rate", "llm_quantile")


def _rollout(r: Reader, node: yaml.Node, path: str) -> RolloutConfig | None:
    m = r.mapping(node, path, _ROLLOUT_KEYS)
    if m is None:
        return None
    before = len(r.issues)
    d = RolloutPolicy()
    steps = r.get(m, "steps", path, _number_list(r), list(d.steps))
    interval = r.get(m, "interval", path, lambda n, p: r.converted(n, p, parse_duration), d.interval_s)
    min_samples = r.get(m, "min_samples", path, r.integer, d.min_samples)
    max_duration = r.get(m, "max_duration", path, lambda n, p: r.converted(n, p, parse_duration), d.max_duration_s)
    confidence = r.get(m, "confidence", path, r.number, d.confidence)
    on_failure = r.get(m, "on_failure", path, _choice(r, ("rollback", "pause")), "rollback")
    on_timeout = r.get(m, "on_timeout", path, _choice(r, ("rollback", "pause")), "pause")
    approval = r.get(m, "approval", path, r.boolean, False)
    notify = r.get(m, "notify", path, r.string, None)
    count_4xx = r.get(m, "count_4xx", path, r.boolean, False)
    if notify is not None and not re.match(r"^https?://[^/\s]+", notify):
        r.error(m["notify"], join(path, "notify"), f"bad URL {notify!r}: give http://host:port/path")
    gates = _gates(r, m["gates"], join(path, "gates")) if "gates" in m else Gates()
    if len(r.issues) > before or gates is None:
        return None
    try:
        policy = RolloutPolicy(tuple(steps or ()), float(interval or 0), int(min_samples or 0),
                               float(max_duration or 0), gates, float(confidence or 0),
                               Action(on_failure or "rollback"), Action(on_timeout or "pause"), bool(approval))
    except ValueError as exc:
        for problem in str(exc).split("; "):
            key = next((k for k in ("steps", "interval", "min_samples", "max_duration", "confidence", "on_failure")
                        if problem.startswith(k)), None)
            r.error(m.get(key, node) if key else node, join(path, key) if key else path, problem)
        return None
    return RolloutConfig(policy, notify, bool(count_4xx))


_ZONE_KEYS = ("agreement_indifference", "error_indifference", "accuracy_indifference", "latency_indifference")


def _gates(r: Reader, node: yaml.Node, path: str) -> Gates | None:
    m = r.mapping(node, path, frozenset((*_GATE_KEYS, *_ZONE_KEYS, "latency_test")))
    if m is None:
        return None
    d = Gates()
    test = r.get(m, "latency_test", path, _choice(r, LATENCY_TESTS), d.latency_test)
    if test is None:
        return None
    values: dict[str, float | None] = {k: getattr(d, k) for k in _GATE_KEYS + _ZONE_KEYS}
    for key, value_node in m.items():
        if key == "latency_test":
            continue
        # An explicit null switches a gate off; an indifference zone always has a width.
        nullable = key in _GATE_KEYS and yaml_null(value_node)
        values[key] = None if nullable else r.number(value_node, join(path, key))
        if values[key] is None and not nullable:
            return None
    zones: dict[str, Any] = {k: values[k] for k in _ZONE_KEYS if values[k] is not None}
    try:
        llm = {k: values[k] for k in ("max_ttft_ratio", "max_tpot_ratio", "min_judge_win_rate")}
        quantile = values["llm_quantile"]
        return Gates(values["min_agreement"], values["max_latency_ratio"], values["max_error_rate_increase"],
                     values["min_accuracy_delta"], **zones, **llm,  # type: ignore[arg-type]
                     llm_quantile=d.llm_quantile if quantile is None else quantile, latency_test=test)
    except ValueError as exc:
        r.error(node, path, str(exc))
        return None


def yaml_null(node: yaml.Node) -> bool:
    return isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:null"


def _number_list(r: Reader) -> Callable[[yaml.Node, str], list[float] | None]:
    def read(node: yaml.Node, path: str) -> list[float] | None:
        items = r.sequence(node, path)
        if items is None:
            return None
        values = [r.number(item, join(path, i)) for i, item in enumerate(items)]
        return None if None in values else [v for v in values if v is not None]
    return read


def _choice(r: Reader, allowed: tuple[str, ...]) -> Callable[[yaml.Node, str], str | None]:
    def read(node: yaml.Node, path: str) -> str | None:
        value = r.string(node, path)
        if value is not None and value not in allowed:
            r.error(node, path, f"must be one of {', '.join(allowed)}, got {value!r}")
            return None
        return value
    return read


_SHADOW_KEYS = frozenset({"backend", "percent", "methods", "max_concurrency", "max_body", "max_response",
                          "timeout", "compare", "after_rollout", "paths"})
_COMPARE_KEYS = frozenset({"format", "paths", "ignore", "abs_tol", "rel_tol", "noise_percent", "agree", "judge"})


def _shadow(r: Reader, node: yaml.Node, path: str, backends: frozenset[str],
            protocol: str | None) -> ShadowConfig | None:
    m = r.mapping(node, path, _SHADOW_KEYS)
    if m is None:
        return None
    before = len(r.issues)
    if "backend" not in m:
        r.error(node, join(path, "backend"), "required key is missing")
    backend = r.get(m, "backend", path, lambda n, p: _backend_ref(r, n, p, backends), None)
    percent = r.get(m, "percent", path, lambda n, p: _percent(r, n, p), 100.0)
    methods = _methods(r, m["methods"], join(path, "methods")) if "methods" in m else frozenset({"POST"})
    max_conc = r.get(m, "max_concurrency", path, r.integer, 64)
    if max_conc is not None and max_conc < 1:
        r.error(m["max_concurrency"], join(path, "max_concurrency"), "must be at least 1")
    max_body = r.get(m, "max_body", path, lambda n, p: r.converted(n, p, parse_size), 1024 * 1024)
    max_response = r.get(m, "max_response", path, lambda n, p: r.converted(n, p, parse_size), 1024 * 1024)
    timeout = r.get(m, "timeout", path, lambda n, p: r.converted(n, p, parse_duration), None)
    spec, noise = _compare(r, m.get("compare"), join(path, "compare"))
    judge = _judge(r, m.get("compare"), join(path, "compare"), spec)
    after = r.get(m, "after_rollout", path, _choice(r, ("stop", "continue")), "stop")
    paths = _mirror_paths(r, m["paths"], join(path, "paths")) if "paths" in m else \
        default_mirror_paths(protocol or (spec.format if spec else None))
    if len(r.issues) > before or None in (backend, percent, methods, max_conc, max_body, max_response, spec, noise,
                                          after, paths):
        return None
    assert backend and spec and methods is not None and paths is not None
    return ShadowConfig(backend, spec, float(percent or 0), frozenset(x.encode() for x in methods),
                        int(max_conc or 1), int(max_body or 0), int(max_response or 0), float(noise or 0), timeout,
                        str(after), paths, judge)


def _mirror_paths(r: Reader, node: yaml.Node, path: str) -> MirrorPaths | None:
    globs = r.string_list(node, path)
    if globs is None:
        return None
    try:
        return mirror_paths(globs)
    except ValueError as exc:
        r.error(node, path, str(exc))
        return None


def _judge(r: Reader, node: yaml.Node | None, path: str, spec: CompareSpec | None) -> JudgeConfig | None:
    judge = node.value if isinstance(node, yaml.MappingNode) else []
    found = next((v for k, v in judge if isinstance(k, yaml.ScalarNode) and k.value == "judge"), None)
    if found is None:
        return None
    if spec is not None and spec.format != "openai":
        r.error(found, join(path, "judge"), "a judge compares free text: it needs format: openai")
        return None
    return read_judge(r, found, join(path, "judge"))


def _compare(r: Reader, node: yaml.Node | None, path: str) -> tuple[CompareSpec | None, float | None]:
    if node is None:
        return CompareSpec.build(), 0.0
    m = r.mapping(node, path, _COMPARE_KEYS)
    if m is None:
        return None, None
    fmt = r.get(m, "format", path, r.string, "json")
    none: list[str] = []
    paths = r.get(m, "paths", path, r.string_list, none)
    ignore = r.get(m, "ignore", path, r.string_list, none)
    abs_tol = r.get(m, "abs_tol", path, r.number, 1e-6)
    rel_tol = r.get(m, "rel_tol", path, r.number, 1e-3)
    noise = r.get(m, "noise_percent", path, lambda n, p: _percent(r, n, p), 0.0)
    agree = r.get(m, "agree", path, _choice(r, ("fields", "labels")), "fields")
    for key, value in (("abs_tol", abs_tol), ("rel_tol", rel_tol)):
        if value is not None and value < 0:
            r.error(m[key], join(path, key), "must be 0 or more")
            return None, None
    if fmt is None or paths is None or ignore is None or abs_tol is None or rel_tol is None or agree is None:
        return None, None
    try:
        spec = CompareSpec.build(format=fmt, paths=paths, ignore=ignore, abs_tol=abs_tol, rel_tol=rel_tol,
                                 agree=agree)
    except ValueError as exc:
        # Path errors start with "paths[i]: " or "ignore[i]: "; anything else is about the format.
        where, sep, what = str(exc).partition(": ")
        key = where.split("[", 1)[0]
        if sep and key in ("paths", "ignore"):
            r.error(m[key], f"{path}.{where}", what)
        else:
            r.error(m.get("format", node), join(path, "format"), str(exc))
        return None, None
    return spec, noise


def _percent(r: Reader, node: yaml.Node, path: str) -> float | None:
    value = r.number(node, path)
    if value is not None and not 0 <= value <= 100:
        r.error(node, path, f"must be within 0..100, got {value:g}")
        return None
    return value


def _methods(r: Reader, node: yaml.Node, path: str) -> frozenset[str] | None:
    names = r.string_list(node, path)
    if names is None:
        return None
    bad = [x for x in names if x.upper() not in _METHODS]
    if bad:
        r.error(node, path, f"unknown method {bad[0]!r} (known: {', '.join(sorted(_METHODS))})")
        return None
    return frozenset(x.upper() for x in names)


_MATCH_KEYS = frozenset({"path", "path_prefix", "path_regex", "methods", "headers", "model"})


def _match(r: Reader, node: yaml.Node, path: str) -> Match | None:
    m = r.mapping(node, path, _MATCH_KEYS)
    if m is None:
        return None
    before = len(r.issues)
    kinds = [k for k in ("path", "path_prefix", "path_regex") if k in m]
    if len(kinds) != 1:
        r.error(node, path, "give exactly one of path, path_prefix, path_regex")
    values: dict[str, str] = {}
    for key in kinds:
        value = r.string(m[key], join(path, key))
        if value is None:
            continue
        if key != "path_regex" and not value.startswith("/"):
            r.error(m[key], join(path, key), f"must start with '/', got {value!r}")
        if key == "path_regex":
            try:
                re.compile(value)
            except re.error as exc:
                r.error(m[key], join(path, key), f"bad regular expression: {exc}")
        values[key] = value
    methods = _methods(r, m["methods"], join(path, "methods")) if "methods" in m else None
    headers = _pairs(r, m["headers"], join(path, "headers"), header_names=True) if "headers" in m else ()
    model = read_models(r, m["model"], join(path, "model")) if "model" in m else None
    if len(r.issues) > before or headers is None:
        return None
    return Match(values.get("path"), values.get("path_prefix"), values.get("path_regex"), methods, headers, model)


def _pairs(
    r: Reader, node: yaml.Node, path: str, *, header_names: bool = False
) -> tuple[tuple[str, str], ...] | None:
    m = r.mapping(node, path)
    if m is None:
        return None
    out = []
    for key, value_node in m.items():
        value = r.string(value_node, join(path, key))
        if header_names and not _HEADER_NAME.match(key):
            r.error(value_node, join(path, key), "not a valid header name")
            value = None
        if value is None:
            return None
        out.append((key.lower() if header_names else key, value))
    return tuple(out)


def _parse_sticky(text: str) -> StickyKey:
    if text == "client":
        return StickyKey("client", "")
    source, sep, name = text.partition(":")
    if not sep or source not in ("header", "cookie", "query") or not name:
        raise ValueError(f"bad sticky key {text!r}: write header:NAME, cookie:NAME, query:NAME or client")
    if source == "header":
        if not _HEADER_NAME.match(name):
            raise ValueError(f"bad sticky key {text!r}: {name!r} is not a valid header name")
        return StickyKey("header", name.lower())
    return StickyKey(source, name)  # type: ignore[arg-type]


def _split(r: Reader, node: yaml.Node, path: str, route_name: str) -> Split | None:
    m = r.mapping(node, path, frozenset({"candidate_percent", "sticky", "salt"}))
    if m is None:
        return None
    percent: float | None = 0.0
    if "candidate_percent" in m:
        percent = r.number(m["candidate_percent"], join(path, "candidate_percent"))
        if percent is not None and not 0 <= percent <= 100:
            r.error(m["candidate_percent"], join(path, "candidate_percent"),
                    f"must be within 0..100, got {percent:g}")
            percent = None
    sticky = r.get(m, "sticky", path, lambda n, p: r.converted(n, p, _parse_sticky), None)
    salt = r.get(m, "salt", path, r.string, route_name)
    if percent is None or salt is None or ("sticky" in m and sticky is None):
        return None
    return Split(percent, sticky, salt)


def _overrides(
    r: Reader, node: yaml.Node, path: str, backends: frozenset[str]
) -> tuple[Override, ...] | None:
    items = r.sequence(node, path)
    if items is None:
        return None
    out = []
    for i, item in enumerate(items):
        p = join(path, i)
        m = r.mapping(item, p, frozenset({"match", "backend"}))
        if m is None:
            return None
        if "match" not in m or "backend" not in m:
            r.error(item, p, "an override needs match and backend")
            return None
        mm = r.mapping(m["match"], join(p, "match"), frozenset({"headers", "query", "cookies"}))
        backend = _backend_ref(r, m["backend"], join(p, "backend"), backends)
        if mm is None or backend is None:
            return None
        if not mm:
            r.error(m["match"], join(p, "match"), "give at least one of headers, query, cookies")
            return None
        no_pairs: tuple[tuple[str, str], ...] = ()
        mp = join(p, "match")
        headers = r.get(mm, "headers", mp, lambda n, q: _pairs(r, n, q, header_names=True), no_pairs)
        query = _pairs(r, mm["query"], join(p, "match.query")) if "query" in mm else ()
        cookies = _pairs(r, mm["cookies"], join(p, "match.cookies")) if "cookies" in mm else ()
        if headers is None or query is None or cookies is None:
            return None
        out.append(Override(OverrideMatch(headers, query, cookies), backend))
    return tuple(out)
