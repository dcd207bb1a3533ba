"""The routing YAML, parsed once into frozen, typed objects.

Loading is two steps, as in uvicorn: read the raw YAML node tree, then build the objects while
collecting every error with its file, line and dotted path. Unknown keys are errors, so a typo
never silently falls back to a default.
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlsplit

import yaml

from router.config.clusterconfig import parse_cluster, parse_workers, workers_problem
from router.config.routes import _ROUTE_KEYS, _routes
from router.config.types import (
    Address,
    AdminConfig,
    BackendConfig,
    Config,
    Endpoint,
    FeedbackConfig,
    HealthCheck,
    Limits,
    Match,
    MonitoringConfig,
    Outlier,
    Override,
    OverrideMatch,
    ProxyConfig,
    RolloutConfig,
    RouteConfig,
    ShadowConfig,
    Split,
    StickyKey,
)
from router.config.units import parse_duration, parse_size
from router.config.yamlsrc import ConfigError, ConfigIssue, Reader, join
from router.observe.alerts import AlertConfig
from router.observe.predlog import PredictionLogConfig

__all__ = [
    "_ROUTE_KEYS",
    "Address",
    "AdminConfig",
    "BackendConfig",
    "Config",
    "ConfigError",
    "ConfigIssue",
    "Endpoint",
    "FeedbackConfig",
    "HealthCheck",
    "Limits",
    "Match",
    "MonitoringConfig",
    "Outlier",
    "Override",
    "OverrideMatch",
    "ProxyConfig",
    "RolloutConfig",
    "RouteConfig",
    "ShadowConfig",
    "Split",
    "StickyKey",
    "load_config",
    "parse_config",
]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^`|~0-9A-Za-z-]+$")
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})



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

