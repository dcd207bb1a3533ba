"""The `cluster:` and `workers:` keys of the routing YAML, parsed into frozen types.

The config package's reader (router/config/__init__.py) calls `parse_cluster`, `parse_workers` and
`workers_problem` like its other readers; router.cluster imports the types from here. (It lived in
router.cluster once, which made the two packages import each other.)
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

import yaml

from router.config.units import parse_duration
from router.config.yamlsrc import Reader

_CLUSTER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
_KEYS = frozenset({"name", "redis_url", "redis_url_env", "lease"})
MIN_LEASE_S = 1.0


@dataclass(frozen=True, slots=True)
class ClusterConfig:
    """Routers with the same `name` and Redis act as one; every key they use starts `mr:{name}:`."""

    name: str
    redis_url: str | None  # given in the YAML (no password allowed there) ...
    redis_url_env: str | None  # ... or read from this environment variable at start
    lease_s: float = 10.0

    @property
    def prefix(self) -> str:
        return f"mr:{self.name}:"

    def url(self) -> str:
        """The Redis URL to connect to; ValueError (with the variable's name) when it is unset."""
        if self.redis_url is not None:
            return self.redis_url
        assert self.redis_url_env is not None
        value = os.environ.get(self.redis_url_env, "")
        if not value:
            raise ValueError(f"cluster.redis_url_env: ${self.redis_url_env} is not set")
        check_redis_url(value, allow_password=True)
        return value


def check_redis_url(text: str, *, allow_password: bool) -> str:
    """ValueError unless `text` is a redis://, rediss:// or unix:// URL (a password only from the env)."""
    parts = urlsplit(text)
    if parts.scheme not in ("redis", "rediss", "unix"):
        raise ValueError(f"must be a redis://, rediss:// or unix:// URL, got {text!r}")
    if parts.scheme != "unix" and not parts.hostname:
        raise ValueError(f"names no host: {text!r}")
    if parts.password and not allow_password:
        raise ValueError("a password must not be written in the YAML: give the URL through redis_url_env")
    try:
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as exc:
        raise ValueError(f"bad port in {text!r}: {exc}") from None
    return text


def _lease(text: str) -> float:
    seconds = parse_duration(text)
    if seconds < MIN_LEASE_S:
        raise ValueError(f"must be at least {MIN_LEASE_S:g}s (the leader renews it every third of it)")
    return seconds


def parse_cluster(r: Reader, node: yaml.Node) -> ClusterConfig | None:
    m = r.mapping(node, "cluster", _KEYS)
    if m is None:
        return None
    if "name" not in m:
        r.error(node, "cluster.name", "required key is missing")
    name = r.get(m, "name", "cluster", r.string, None)
    if name is not None and not _CLUSTER_NAME.match(name):
        r.error(m["name"], "cluster.name", "must be letters, digits, '.', '_' or '-' (at most 63)")
        name = None
    url = r.get(m, "redis_url", "cluster", lambda n, p: r.converted(
        n, p, lambda t: check_redis_url(t, allow_password=False)), None)
    env = r.get(m, "redis_url_env", "cluster", r.string, None)
    if ("redis_url" in m) == ("redis_url_env" in m):
        r.error(node, "cluster", "give exactly one of redis_url and redis_url_env")
        return None
    lease = r.get(m, "lease", "cluster", lambda n, p: r.converted(n, p, _lease), 10.0)
    if name is None or lease is None or (url is None and not env):
        if "redis_url_env" in m and env == "":
            r.error(m["redis_url_env"], "cluster.redis_url_env", "must name an environment variable")
        return None
    return ClusterConfig(name, url, env or None, lease)


def parse_workers(r: Reader, node: yaml.Node) -> int | None:
    value = r.integer(node, "workers")
    if value is not None and not 1 <= value <= 64:
        r.error(node, "workers", "must be within 1..64")
        return None
    return value


def workers_problem(workers: int, clustered: bool, shared: list[str]) -> str | None:
    """Why `workers` cannot run without a cluster, or None."""
    if workers <= 1 or clustered or not shared:
        return None
    return (f"{workers} processes need a `cluster` block: routes {', '.join(shared)} have state that every "
            "process must agree on (a rollout, a shadow report or a run-time split); add `cluster:` with a "
            "Redis, or set workers: 1")


