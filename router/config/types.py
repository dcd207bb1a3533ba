"""The configuration's types: frozen dataclasses, built once by the readers in router.config."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from router.analysis.compare import CompareSpec
from router.analysis.decision import RolloutPolicy
from router.analysis.protocols import EVERY_PATH, MirrorPaths
from router.config.clusterconfig import ClusterConfig
from router.config.llmconfig import JudgeConfig, ModelMatch
from router.observe.alerts import AlertConfig
from router.observe.predlog import PredictionLogConfig

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

