"""The routing YAML, parsed once into frozen, typed objects.

Loading is two steps, as in uvicorn: read the raw YAML node tree, then build the objects while
collecting every error with its file, line and dotted path. Unknown keys are errors, so a typo
never silently falls back to a default.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import yaml

from router.alerts import AlertConfig
from router.cluster.config import ClusterConfig, parse_cluster, parse_workers, workers_problem
from router.compare import CompareSpec
from router.decision import Action, Gates, RolloutPolicy
from router.llmconfig import JudgeConfig, ModelMatch, read_judge, read_models
from router.predlog import PredictionLogConfig
from router.protocols import EVERY_PATH, PROTOCOLS, MirrorPaths, default_mirror_paths, mirror_paths
from router.units import parse_duration, parse_size
from router.yamlsrc import ConfigError, ConfigIssue, Reader, join

__all__ = [
    "Address",
    "AdminConfig",
    "BackendConfig",
    "Config",
    "ConfigError",
    "ConfigIssue",
    "Endpoint",
    "HealthCheck",
    "Limits",
    "Match",
    "Outlier",
    "Override",
    "OverrideMatch",
    "ProxyConfig",
    "RouteConfig",
    "Split",
    "StickyKey",
    "load_config",
    "parse_config",
]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^`|~0-9A-Za-z-]+$")
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


@dataclass(frozen=True, slots=True)
class Address:
    """A host and port to listen on."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class Limits:
    """Data-plane limits; every one has a safe default."""

    max_body: int = 10 * 1024 * 1024
    connect_timeout: float = 2.0
    request_timeout: float = 30.0
    drain_timeout: float = 30.0
    header_timeout: float = 10.0
    idle_timeout: float = 75.0
    max_header_size: int = 64 * 1024
    max_headers: int = 100
    max_connections: int = 10_000
    min_body_rate: int = 512  # bytes per second, averaged, after the first header_timeout of a body
    client_write_buffer: int = 64 * 1024  # a client's unsent responses beyond this: stop reading it
    max_response_header_size: int = 64 * 1024  # a backend's response head; larger: 502


@dataclass(frozen=True, slots=True)
class AdminConfig:
    """The admin listener: metrics, status and control. Never the data port."""

    listen: Address = Address("127.0.0.1", 9901)
    token_env: str | None = "ROUTER_ADMIN_TOKEN"
    # Host names (besides IP literals, localhost and the listen host) the admin API answers to:
    # any other Host header is refused, which defeats DNS rebinding. "*" turns the check off.
    allowed_hosts: tuple[str, ...] = ()
    read_token: bool = False  # reads (status, diffs, metrics) need the token too


@dataclass(frozen=True, slots=True)
class ProxyConfig:
    """How the proxy presents itself to clients and backends."""

    backend_header: bool = True  # X-Model-Backend on responses
    via: str = "model-router"  # pseudonym in Via, also used to detect loops
    trusted_hops: int = 0  # how many X-Forwarded-For entries to believe

    @property
    def via_entry(self) -> bytes:
        return f"1.1 {self.via}".encode()


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One server of a backend."""

    url: str
    scheme: str
    host: str
    port: int

    @property
    def authority(self) -> str:
        default = 443 if self.scheme == "https" else 80
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == default else f"{host}:{self.port}"


@dataclass(frozen=True, slots=True)
class HealthCheck:
    """Active health checks: GET `path` on every endpoint every `interval`."""

    path: str = "/health"
    interval: float = 5.0
    timeout: float = 1.0
    unhealthy_after: int = 3
    healthy_after: int = 2


@dataclass(frozen=True, slots=True)
class Outlier:
    """Passive outlier ejection: an endpoint failing this many times in a row is taken out."""

    consecutive_failures: int = 5
    base_ejection: float = 10.0  # doubled on each ejection in a row, up to max_ejection
    max_ejection: float = 300.0


@dataclass(frozen=True, slots=True)
class BackendConfig:
    """One model backend, by name: one or more endpoints balanced round-robin."""

    name: str
    endpoints: tuple[Endpoint, ...]
    max_connections: int = 256  # per endpoint
    max_pending: int = 100  # requests waiting for a connection; beyond, 503 at once (circuit breaker)
    health: HealthCheck | None = None
    outlier: Outlier = Outlier()
    model: str | None = None  # the model name this backend serves: the request body's `model` is rewritten to it

    @property
    def url(self) -> str:
        return ", ".join(e.url for e in self.endpoints)


@dataclass(frozen=True, slots=True)
class Match:
    """Which requests a route takes. Header names are lower-case."""

    path: str | None = None
    path_prefix: str | None = None
    path_regex: str | None = None
    methods: frozenset[str] | None = None
    headers: tuple[tuple[str, str], ...] = ()
    model: ModelMatch | None = None  # the JSON body's `model` (OpenAI-style APIs)


@dataclass(frozen=True, slots=True)
class StickyKey:
    """Where the sticky assignment key is read from."""

    source: Literal["header", "cookie", "query", "client"]
    name: str  # lower-case for headers; empty for client

    def __str__(self) -> str:
        return f"{self.source}:{self.name}" if self.name else self.source


@dataclass(frozen=True, slots=True)
class Split:
    """Share of traffic for the candidate, and how a key keeps its assignment."""

    candidate_percent: float = 0.0
    sticky: StickyKey | None = None
    salt: str = ""


@dataclass(frozen=True, slots=True)
class OverrideMatch:
    """Exact values that pin a request; all given must match."""

    headers: tuple[tuple[str, str], ...] = ()
    query: tuple[tuple[str, str], ...] = ()
    cookies: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class Override:
    """A feature toggle: requests matching `match` go to `backend`, before the split."""

    match: OverrideMatch
    backend: str


@dataclass(frozen=True, slots=True)
class ShadowConfig:
    """Mirror live requests to `backend` and compare its answers with the live model's."""

    backend: str
    compare: CompareSpec
    percent: float = 100.0
    methods: frozenset[bytes] = frozenset({b"POST"})
    max_concurrency: int = 64
    max_body: int = 1024 * 1024  # larger requests are not mirrored
    max_response: int = 1024 * 1024  # larger responses (either side) are not compared
    noise_percent: float = 0.0
    timeout: float | None = None  # default: the route's timeout
    after_rollout: str = "stop"  # "stop": no more copies once a rollout of this backend ends; "continue"
    paths: MirrorPaths = EVERY_PATH  # which request paths are mirrored
    judge: JudgeConfig | None = None  # pairwise judge of free-text answers (compare.judge)


@dataclass(frozen=True, slots=True)
class RolloutConfig:
    """Automatic rollout of the route's candidate: the decision policy and where to tell."""

    policy: RolloutPolicy
    notify: str | None = None
    count_4xx: bool = False  # client errors (4xx) count as the model's errors in the gates


# label: a class (an integer or string, or the argmax of a score vector); scores: a vector of class
# scores, scored by its argmax; value: a regression value; auto: inferred from the response.
PredictionKind = Literal["auto", "label", "scores", "value"]
PREDICTION_KINDS: tuple[str, ...] = ("auto", "label", "scores", "value")


@dataclass(frozen=True, slots=True)
class RouteConfig:
    """One route as written in the YAML."""

    name: str
    match: Match
    primary: str
    candidate: str | None = None
    split: Split = Split()
    overrides: tuple[Override, ...] = ()
    timeout: float | None = None  # overrides limits.request_timeout
    retries: int = 1  # extra attempts where safe, within the route's timeout and the retry budget
    shadow: ShadowConfig | None = None
    rollout: RolloutConfig | None = None
    protocol: str | None = None  # explicit `protocol:`, else the shadow's compare.format
    prediction: PredictionKind = "auto"  # how feedback reads a prediction from a response
    fallback: tuple[str, ...] = ()  # backends tried in turn on connect failure, 429, 503 or first_token_timeout
    first_token_timeout: float | None = None  # no response byte by then: fall back (needs fallback)


@dataclass(frozen=True, slots=True)
class FeedbackConfig:
    """The feedback loop's store of predictions awaiting their true outcome."""

    retention: float = 7 * 86400.0
    max_rows: int = 1_000_000


@dataclass(frozen=True, slots=True)
class MonitoringConfig:
    """Prediction log (off unless configured), feedback loop (off unless configured), alerts (on)."""

    prediction_log: PredictionLogConfig | None = None
    feedback: FeedbackConfig | None = None
    alerts: AlertConfig | None = field(default_factory=AlertConfig)
    capture_bytes: int = 64 * 1024  # response bytes kept to read the prediction (labels, scores)


@dataclass(frozen=True, slots=True)
class Config:
    """The whole routing file."""

    source: str
    listen: Address
    admin: AdminConfig
    state_dir: Path
    limits: Limits
    proxy: ProxyConfig
    backends: Mapping[str, BackendConfig]
    routes: tuple[RouteConfig, ...]
    monitoring: MonitoringConfig = MonitoringConfig()
    cluster: ClusterConfig | None = None  # None: one router alone, state in state_dir
    workers: int = 1  # processes on this host sharing `listen`

    def summary(self) -> str:
        return (f"{self.source}: OK, {len(self.routes)} routes, {len(self.backends)} backends, "
                f"listen {self.listen}, admin {self.admin.listen}")


def load_config(path: str | Path) -> Config:
    """Read and validate a routing file; raises ConfigError listing every problem."""
    name = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([ConfigIssue(name, 1, "", f"cannot read file: {exc.strerror}")]) from None
    except UnicodeDecodeError as exc:
        raise ConfigError([ConfigIssue(name, 1, "", f"not UTF-8 text: {exc.reason}")]) from None
    return parse_config(text, name)


def parse_config(text: str, source: str = "<string>") -> Config:
    """Validate YAML text; raises ConfigError listing every problem."""
    r = Reader(source)
    root = r.parse(text)
    if root is None:
        if not r.issues:
            r.issues.append(ConfigIssue(source, 1, "", "the file is empty"))
        raise ConfigError(r.issues)
    try:
        config = _build(r, root, source)
    except RecursionError:
        r.issues.append(ConfigIssue(source, 1, "", "YAML nested too deeply"))
        config = None
    if r.issues or config is None:
        raise ConfigError(sorted(r.issues, key=lambda i: i.line))
    return config


_TOP = frozenset({"listen", "admin", "state_dir", "limits", "proxy", "backends", "routes", "monitoring", "cluster",
                  "workers"})


def _build(r: Reader, root: yaml.Node, source: str) -> Config | None:
    top = r.mapping(root, "", _TOP)
    if top is None:
        return None
    for key in ("listen", "backends", "routes"):
        if key not in top:
            r.error(root, key, "required key is missing")
    listen = _address(r, top["listen"], "listen") if "listen" in top else None
    admin = _admin(r, top["admin"]) if "admin" in top else AdminConfig()
    state_dir = r.string(top["state_dir"], "state_dir") if "state_dir" in top else "var/router"
    limits = _limits(r, top["limits"]) if "limits" in top else Limits()
    proxy = _proxy(r, top["proxy"]) if "proxy" in top else ProxyConfig()
    backends = _backends(r, top["backends"]) if "backends" in top else {}
    # Reference checks use every declared name, so one bad backend does not cascade.
    declared = _declared_names(top.get("backends"))
    routes = _routes(r, top["routes"], declared) if "routes" in top else ()
    if listen and admin and listen == admin.listen:
        r.error(top.get("admin"), "admin.listen", f"must differ from listen ({listen})")
    monitoring = _monitoring(r, top["monitoring"], Path(state_dir or ".")) if "monitoring" in top else \
        MonitoringConfig()
    cluster = parse_cluster(r, top["cluster"]) if "cluster" in top else None
    workers = parse_workers(r, top["workers"]) if "workers" in top else 1
    if workers is not None and routes:
        shared = [rc.name for rc in routes if rc.rollout or rc.shadow or rc.candidate]
        problem = workers_problem(workers, "cluster" in top, shared)
        if problem:
            r.error(top["workers"], "workers", problem)
    if None in (listen, admin, state_dir, limits, proxy, backends, routes, monitoring, workers) or \
            ("cluster" in top and cluster is None):
        return None
    assert listen and admin and state_dir and limits and proxy and backends is not None
    assert routes is not None and monitoring is not None and workers is not None
    return Config(source, listen, admin, Path(state_dir), limits, proxy, backends, routes, monitoring, cluster,
                  workers)


_LOG_KEYS = frozenset({"path", "sample_rate", "include_bodies", "max_body_bytes", "redact", "max_file_bytes",
                       "keep_files", "queue_size"})
_ALERT_KEYS = frozenset({"enabled", "bucket", "window", "baseline", "min_samples", "min_baseline_samples",
                         "latency_factor", "error_floor", "min_errors", "psi_threshold", "drift_window", "reference",
                         "drift_min_samples", "cooldown", "alpha"})


def _monitoring(r: Reader, node: yaml.Node, state_dir: Path) -> MonitoringConfig | None:
    m = r.mapping(node, "monitoring", frozenset({"prediction_log", "feedback", "alerts", "capture_bytes"}))
    if m is None:
        return None
    before = len(r.issues)
    log = _prediction_log(r, m["prediction_log"], state_dir) if "prediction_log" in m else None
    feedback = None
    if "feedback" in m:
        f = r.mapping(m["feedback"], "monitoring.feedback", frozenset({"retention", "max_rows"}))
        if f is not None:
            d = FeedbackConfig()
            retention = _seconds(r, f, "retention", "monitoring.feedback", d.retention)
            max_rows = _positive(r, f, "max_rows", "monitoring.feedback", d.max_rows)
            if retention is not None and max_rows is not None:
                feedback = FeedbackConfig(retention, max_rows)
    alerts = _alerts(r, m["alerts"]) if "alerts" in m else AlertConfig()
    capture = r.get(m, "capture_bytes", "monitoring", lambda n, p: r.converted(n, p, parse_size), 64 * 1024)
    if len(r.issues) > before or capture is None:
        return None
    return MonitoringConfig(log, feedback, alerts, capture)


def _prediction_log(r: Reader, node: yaml.Node, state_dir: Path) -> PredictionLogConfig | None:
    path = "monitoring.prediction_log"
    m = r.mapping(node, path, _LOG_KEYS)
    if m is None:
        return None
    values: dict[str, object] = {}
    file = r.get(m, "path", path, r.string, str(state_dir / "predictions.jsonl"))
    values["path"] = Path(file) if file else None
    values["sample_rate"] = r.get(m, "sample_rate", path, r.number, 1.0)
    values["include_bodies"] = r.get(m, "include_bodies", path, r.boolean, False)
    values["redact"] = r.get(m, "redact", path, r.string_list, [])
    for key in ("max_body_bytes", "max_file_bytes"):
        if key in m:
            values[key] = r.converted(m[key], join(path, key), parse_size)
    for key in ("keep_files", "queue_size"):
        if key in m:
            values[key] = r.integer(m[key], join(path, key))
    if any(v is None for v in values.values()):
        return None
    values["redact"] = tuple(values["redact"])  # type: ignore[arg-type]
    try:
        return PredictionLogConfig(**values)  # type: ignore[arg-type]
    except ValueError as exc:
        r.error(node, path, str(exc))
        return None


def _alerts(r: Reader, node: yaml.Node) -> AlertConfig | None:
    path = "monitoring.alerts"
    m = r.mapping(node, path, _ALERT_KEYS)
    if m is None:
        return None
    if "enabled" in m and r.boolean(m["enabled"], join(path, "enabled")) is False:
        return None
    renames = {"bucket": "bucket_s", "window": "window_s", "baseline": "baseline_s", "drift_window": "drift_window_s",
               "reference": "reference_s", "cooldown": "cooldown_s"}
    values: dict[str, float | int | None] = {}
    for key, value_node in m.items():
        if key == "enabled":
            continue
        if key in renames:
            values[renames[key]] = r.converted(value_node, join(path, key), parse_duration)
        elif key in ("min_samples", "min_baseline_samples", "min_errors", "drift_min_samples"):
            values[key] = r.integer(value_node, join(path, key))
        else:
            values[key] = r.number(value_node, join(path, key))
    if any(v is None for v in values.values()):
        return None
    try:
        return AlertConfig(**values)  # type: ignore[arg-type]
    except (ValueError, TypeError) as exc:
        r.error(node, path, str(exc))
        return None


def _declared_names(node: yaml.Node | None) -> frozenset[str]:
    if not isinstance(node, yaml.MappingNode):
        return frozenset()
    return frozenset(str(k.value) for k, _ in node.value if isinstance(k, yaml.ScalarNode))


def _parse_address(text: str) -> Address:
    m = re.match(r"^(?:\[([0-9A-Fa-f:.]+)\]|([A-Za-z0-9.-]+)):(\d{1,5})$", text.strip())
    if not m:
        raise ValueError(f"bad address {text!r}: write host:port, e.g. 127.0.0.1:8080")
    port = int(m.group(3))
    if port > 65535:
        raise ValueError(f"port {port} is out of range 0..65535")
    return Address(m.group(1) or m.group(2), port)


def _address(r: Reader, node: yaml.Node, path: str) -> Address | None:
    return r.converted(node, path, _parse_address)


_DEFAULT_ADMIN = Address("127.0.0.1", 9901)


def _admin(r: Reader, node: yaml.Node) -> AdminConfig | None:
    m = r.mapping(node, "admin", frozenset({"listen", "token_env", "allowed_hosts", "read_token"}))
    if m is None:
        return None
    listen = r.get(m, "listen", "admin", lambda n, p: _address(r, n, p), _DEFAULT_ADMIN)
    token_env = r.string(m["token_env"], "admin.token_env") if "token_env" in m else "ROUTER_ADMIN_TOKEN"
    hosts = _allowed_hosts(r, m["allowed_hosts"]) if "allowed_hosts" in m else ()
    read_token = r.get(m, "read_token", "admin", r.boolean, False)
    if read_token and token_env == "":
        r.error(m["read_token"], "admin.read_token", "needs a token: admin.token_env is empty")
        return None
    if listen is None or token_env is None or hosts is None or read_token is None:
        return None
    return AdminConfig(listen, token_env or None, hosts, read_token)


def _allowed_hosts(r: Reader, node: yaml.Node) -> tuple[str, ...] | None:
    names = r.string_list(node, "admin.allowed_hosts")
    if names is None:
        return None
    for i, name in enumerate(names):
        if not name or any(c.isspace() or c in ":/[]@" for c in name):
            r.error(node.value[i], f"admin.allowed_hosts[{i}]",
                    f"expected a host name without port or scheme (or \"*\"), got {name!r}")
            return None
    return tuple(n.lower().rstrip(".") for n in names)


_LIMIT_KINDS = {
    "max_body": "size", "max_header_size": "size", "max_headers": "int", "max_connections": "int",
    "connect_timeout": "duration", "request_timeout": "duration", "drain_timeout": "duration",
    "header_timeout": "duration", "idle_timeout": "duration", "min_body_rate": "size",
    "client_write_buffer": "size", "max_response_header_size": "size",
}


def _limits(r: Reader, node: yaml.Node) -> Limits | None:
    m = r.mapping(node, "limits", frozenset(_LIMIT_KINDS))
    if m is None:
        return None
    values: dict[str, float | int] = {}
    ok = True
    for key, value_node in m.items():
        path = join("limits", key)
        kind = _LIMIT_KINDS[key]
        value: float | int | None
        if kind == "size":
            value = r.converted(value_node, path, parse_size)
        elif kind == "duration":
            value = r.converted(value_node, path, parse_duration)
        else:
            value = r.integer(value_node, path)
        if value is not None and value <= 0:
            r.error(value_node, path, "must be greater than zero")
            value = None
        ok = ok and value is not None
        if value is not None:
            values[key] = value
    return Limits(**values) if ok else None  # type: ignore[arg-type]


def _proxy(r: Reader, node: yaml.Node) -> ProxyConfig | None:
    m = r.mapping(node, "proxy", frozenset({"backend_header", "via", "trusted_hops"}))
    if m is None:
        return None
    d = ProxyConfig()
    header = r.get(m, "backend_header", "proxy", r.boolean, d.backend_header)
    via = r.get(m, "via", "proxy", r.string, d.via)
    hops = r.get(m, "trusted_hops", "proxy", r.integer, d.trusted_hops)
    if via is not None and not _NAME.match(via):
        r.error(m["via"], "proxy.via", "must be a token of letters, digits, '.', '_' or '-'")
        via = None
    if hops is not None and hops < 0:
        r.error(m["trusted_hops"], "proxy.trusted_hops", "must be 0 or more")
        hops = None
    if header is None or via is None or hops is None:
        return None
    return ProxyConfig(header, via, hops)


def _parse_url(text: str) -> tuple[str, str, int]:
    parts = urlsplit(text.strip())
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"bad URL {text!r}: the scheme must be http or https")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"bad URL {text!r}: the port is not a number in 0..65535") from None
    if not parts.hostname:
        raise ValueError(f"bad URL {text!r}: no host")
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
        raise ValueError(f"bad URL {text!r}: give only scheme://host:port (no path, query or user)")
    return parts.scheme, parts.hostname, port or (443 if parts.scheme == "https" else 80)


def _backends(r: Reader, node: yaml.Node) -> dict[str, BackendConfig] | None:
    m = r.mapping(node, "backends")
    if m is None:
        return None
    if not m:
        r.error(node, "backends", "define at least one backend")
    out: dict[str, BackendConfig] = {}
    for name, value in m.items():
        path = join("backends", name)
        if not _NAME.match(name):
            r.error(value, path, "backend names are letters, digits, '.', '_' or '-' (max 63)")
            continue
        backend = _backend(r, value, path, name)
        if backend is not None:
            out[name] = backend
    return out


_BACKEND_KEYS = frozenset({"url", "urls", "max_connections", "max_pending", "health", "outlier", "model"})


def _backend(r: Reader, node: yaml.Node, path: str, name: str) -> BackendConfig | None:
    b = r.mapping(node, path, _BACKEND_KEYS)
    if b is None:
        return None
    before = len(r.issues)
    if ("url" in b) == ("urls" in b):
        r.error(node, path, "give url (one endpoint) or urls (a list of endpoints), not both or neither")
        return None
    if "url" in b:
        urls: list[tuple[yaml.Node, str]] = [(b["url"], join(path, "url"))]
    else:
        items = r.sequence(b["urls"], join(path, "urls")) or []
        if not items and len(r.issues) == before:
            r.error(b["urls"], join(path, "urls"), "give at least one URL")
        urls = [(item, join(join(path, "urls"), i)) for i, item in enumerate(items)]
    endpoints = []
    for url_node, url_path in urls:
        text = r.string(url_node, url_path)
        parsed = r.converted(url_node, url_path, _parse_url) if text else None
        if text and parsed:
            endpoints.append(Endpoint(text.strip(), *parsed))
    if len({e.authority for e in endpoints}) != len(endpoints):
        r.error(node, path, "the same endpoint is listed twice")
    max_conn = _positive(r, b, "max_connections", path, 256)
    max_pending = r.get(b, "max_pending", path, r.integer, 100)
    if max_pending is not None and max_pending < 0:
        r.error(b["max_pending"], join(path, "max_pending"), "must be 0 or more")
    health = _health(r, b["health"], join(path, "health")) if "health" in b else None
    outlier = _outlier(r, b["outlier"], join(path, "outlier")) if "outlier" in b else Outlier()
    model = r.get(b, "model", path, r.string, None)
    if model == "":
        r.error(b["model"], join(path, "model"), "must not be empty")
    if len(r.issues) > before or not endpoints or max_conn is None or max_pending is None or outlier is None:
        return None
    return BackendConfig(name, tuple(endpoints), max_conn, max_pending, health, outlier, model)


def _positive(r: Reader, m: dict[str, yaml.Node], key: str, path: str, default: int) -> int | None:
    value = r.get(m, key, path, r.integer, default)
    if value is not None and value < 1:
        r.error(m[key], join(path, key), "must be at least 1")
        return None
    return value


def _seconds(r: Reader, m: dict[str, yaml.Node], key: str, path: str, default: float) -> float | None:
    value = r.get(m, key, path, lambda n, p: r.converted(n, p, parse_duration), default)
    if value is not None and value <= 0:
        r.error(m[key], join(path, key), "must be greater than zero")
        return None
    return value


def _health(r: Reader, node: yaml.Node, path: str) -> HealthCheck | None:
    m = r.mapping(node, path, frozenset({"path", "interval", "timeout", "unhealthy_after", "healthy_after"}))
    if m is None:
        return None
    d = HealthCheck()
    check_path = r.get(m, "path", path, r.string, d.path)
    if check_path is not None and not check_path.startswith("/"):
        r.error(m["path"], join(path, "path"), f"must start with '/', got {check_path!r}")
        check_path = None
    values = (check_path, _seconds(r, m, "interval", path, d.interval), _seconds(r, m, "timeout", path, d.timeout),
              _positive(r, m, "unhealthy_after", path, d.unhealthy_after),
              _positive(r, m, "healthy_after", path, d.healthy_after))
    if any(v is None for v in values):
        return None
    return HealthCheck(*values)  # type: ignore[arg-type]


def _outlier(r: Reader, node: yaml.Node, path: str) -> Outlier | None:
    m = r.mapping(node, path, frozenset({"consecutive_failures", "base_ejection", "max_ejection"}))
    if m is None:
        return None
    d = Outlier()
    values = (_positive(r, m, "consecutive_failures", path, d.consecutive_failures),
              _seconds(r, m, "base_ejection", path, d.base_ejection),
              _seconds(r, m, "max_ejection", path, d.max_ejection))
    if any(v is None for v in values):
        return None
    return Outlier(*values)  # type: ignore[arg-type]


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
    m = r.mapping(node, path, frozenset(_GATE_KEYS + _ZONE_KEYS))
    if m is None:
        return None
    d = Gates()
    values: dict[str, float | None] = {k: getattr(d, k) for k in _GATE_KEYS + _ZONE_KEYS}
    for key, value_node in m.items():
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
                     llm_quantile=d.llm_quantile if quantile is None else quantile)
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
