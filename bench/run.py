"""Side-by-side load test in one run: the backend directly, nginx, and the router.

Every case gets the same wrk load (POST of a small JSON body, fixed connections,
one wrk thread) against the same fast backend, so the proxy is what differs.
See bench/README.md for how to read the output.

    .venv/bin/python bench/run.py [--duration 1] [--repeat 15] [--cases direct,nginx,router]

To add a case, write a context manager that starts what it needs, yields a Target
and stops everything on exit, and append a Case to CASES (and a row to RATIOS).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn

import nginx
import yaml

ROOT = Path(__file__).resolve().parent.parent
OUT_DIR = ROOT / "bench" / "out"
HOST = "127.0.0.1"
REQUEST_PATH = "/v1/models/m/predict"
BODY = '{"inputs": [[0.1, 0.2, 0.3, 0.4]]}'
SHADOW_LATENCY_MS = 200
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 5.0

WRK_SCRIPT = f"""\
wrk.method = "POST"
wrk.body = '{BODY}'
wrk.headers["Content-Type"] = "application/json"
"""


class BenchError(Exception):
    """The harness itself cannot go on (missing tool, backend did not start)."""


class Unavailable(Exception):
    """A case cannot run on this checkout, e.g. the router lacks the feature yet."""


class StartFailed(BenchError):
    """A process exited or never became ready."""


# --- processes -----------------------------------------------------------------

_libc = ctypes.CDLL(None, use_errno=True)
_PR_SET_PDEATHSIG = 1


def _child_setup(cpus: frozenset[int] | None) -> Callable[[], None]:
    """Runs in the child before exec: pin it, and have it die if the bench is killed."""
    def setup() -> None:
        if cpus:
            os.sched_setaffinity(0, cpus)
        _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    return setup


@dataclass
class Env:
    """What every case needs: tools, scratch space, CPU layout, the shared backend."""

    tmp: Path
    python: str
    nginx: str
    wrk: str
    pins: dict[str, frozenset[int] | None]
    backend_port: int = 0
    live: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def log(self, name: str) -> Path:
        return self.tmp / f"{name}.log"

    def exited(self, names: frozenset[str]) -> list[str]:
        """Those of `names` that died while they should have been serving."""
        return [f"{name} exited during the run (code {p.returncode}), see {name}.log"
                for name, p in self.live.items() if name in names and p.poll() is not None]


@contextlib.contextmanager
def process(env: Env, name: str, argv: list[str], role: str,
            ready: Callable[[], bool]) -> Iterator[subprocess.Popen[bytes]]:
    """Start argv in its own process group; yield once ready; stop the group on exit."""
    with env.log(name).open("wb") as log:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                cwd=ROOT, start_new_session=True,
                                preexec_fn=_child_setup(env.pins[role]))
    env.live[name] = proc
    try:
        _wait_ready(env, name, proc, ready)
        yield proc
    finally:
        del env.live[name]
        _stop(proc)


def _wait_ready(env: Env, name: str, proc: subprocess.Popen[bytes], ready: Callable[[], bool]) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while proc.poll() is None:
        if ready():
            return
        if time.monotonic() > deadline:
            raise StartFailed(f"{name} not ready after {START_TIMEOUT_S:g} s; {_tail(env.log(name))}")
        time.sleep(0.05)
    raise StartFailed(f"{name} exited with code {proc.returncode}: {_tail(env.log(name))}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)  # the group: nginx workers, router workers
        try:
            proc.wait(STOP_TIMEOUT_S)
            return
        except subprocess.TimeoutExpired:
            continue


def _tail(log: Path, lines: int = 3) -> str:
    text = log.read_text(errors="replace").strip().splitlines() if log.exists() else []
    return " | ".join(text[-lines:]) or "(no output)"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def port_open(port: int) -> Callable[[], bool]:
    def check() -> bool:
        try:
            socket.create_connection((HOST, port), timeout=0.2).close()
        except OSError:
            return False
        return True
    return check


def http_ok(url: str) -> Callable[[], bool]:
    def check() -> bool:
        try:
            with urllib.request.urlopen(url, timeout=0.5) as resp:
                return int(resp.status) == 200
        except OSError:
            return False
    return check


# --- the servers -----------------------------------------------------------------

@dataclass(frozen=True)
class Target:
    """Where a case takes load, and the mirror port to watch if it mirrors."""

    url: str
    mirror_port: int | None = None


def url(port: int) -> str:
    return f"http://{HOST}:{port}{REQUEST_PATH}"


LLM_BODY = '{"model": "llama-3-8b", "messages": [{"role": "user", "content": "hi"}]}'


@contextlib.contextmanager
def fast_backend(env: Env, name: str, latency_ms: int = 0, role: str = "backend") -> Iterator[int]:
    port = free_port()
    argv = [env.python, "-m", "backends.fast_server", "--port", str(port)]
    if latency_ms:
        argv += ["--latency-ms", str(latency_ms)]
    with process(env, name, argv, role, port_open(port)):
        yield port


@contextlib.contextmanager
def nginx_proxy(env: Env, name: str, mirror: int | None = None, workers: int = 1) -> Iterator[int]:
    prefix = env.tmp / name
    prefix.mkdir(exist_ok=True)
    port = free_port()
    conf = prefix / "nginx.conf"
    conf.write_text(nginx.config(prefix, port, env.backend_port, mirror, workers))
    argv = [env.nginx, "-p", str(prefix), "-c", str(conf), "-e", str(prefix / "error.log")]
    with process(env, name, argv, "proxy", port_open(port)):
        yield port


def router_config(env: Env, name: str, port: int, admin: int,
                  shadow: int | None = None, extra_routes: int = 0, **extra: Any) -> dict[str, Any]:
    """Router config with one live route; `extra_routes` non-matching routes come first; `extra`
    top-level keys (cluster, workers) and `model_match` (a model-matched route in front, as LLM
    gateways have) switch features on."""
    backends: dict[str, Any] = {"m": {"url": f"http://{HOST}:{env.backend_port}"}}
    route: dict[str, Any] = {"name": "m", "match": {"path_prefix": "/v1/models/m"}, "primary": "m"}
    if shadow:
        backends["shadow"] = {"url": f"http://{HOST}:{shadow}"}
        route["shadow"] = {"backend": "shadow", "percent": 100}
    fillers = [{"name": f"filler-{i}", "match": {"path_prefix": f"/v1/models/filler-{i}"}, "primary": "m"}
               for i in range(extra_routes)]
    if extra.pop("model_match", False):
        # The measured request names its model in the body: the route matches on it, and the
        # backend's served name is written into the body (both parse the JSON body).
        backends["m"]["model"] = "served-llama"
        route["match"] = {"path_prefix": "/v1/models/m", "model": ["llama-3-8b", "llama-3-*"]}
    return {"listen": f"{HOST}:{port}", "admin": {"listen": f"{HOST}:{admin}"},
            "state_dir": str(env.tmp / name / "state"), "backends": backends, "routes": [*fillers, route], **extra}


@contextlib.contextmanager
def router_proxy(env: Env, name: str, shadow: int | None = None, extra_routes: int = 0,
                 **extra: Any) -> Iterator[int]:
    """One router process. A router that will not start makes the case n/a, with its reason."""
    (env.tmp / name).mkdir(exist_ok=True)
    port, admin = free_port(), free_port()
    conf = env.tmp / name / "router.yaml"
    conf.write_text(yaml.safe_dump(router_config(env, name, port, admin, shadow, extra_routes, **extra),
                                   sort_keys=False))
    argv = [env.python, "-m", "router", "serve", "--config", str(conf)]
    try:
        with process(env, name, argv, "proxy", http_ok(f"http://{HOST}:{admin}/-/healthz")):
            yield port
    except StartFailed as e:
        raise Unavailable(str(e)) from e


# --- the cases -----------------------------------------------------------------

@dataclass(frozen=True)
class Case:
    """A named setup: `start(env, name)` is a context manager yielding the Target, stopping all on
    exit; its processes are named after `name` (their logs too).

    `connections` overrides the load's (1 for the low-load cases); `body` the request body."""

    name: str
    about: str
    start: Callable[[Env, str], contextlib.AbstractContextManager[Target]]
    connections: int | None = None
    body: str = BODY


@contextlib.contextmanager
def case_direct(env: Env, name: str) -> Iterator[Target]:
    yield Target(url(env.backend_port))


@contextlib.contextmanager
def case_nginx(env: Env, name: str) -> Iterator[Target]:
    with nginx_proxy(env, name) as port:
        yield Target(url(port))


@contextlib.contextmanager
def case_router(env: Env, name: str) -> Iterator[Target]:
    with router_proxy(env, name) as port:
        yield Target(url(port))


@contextlib.contextmanager
def case_nginx_mirror(env: Env, name: str) -> Iterator[Target]:
    with (fast_backend(env, f"{name}-backend", SHADOW_LATENCY_MS, "mirror") as mirror,
          nginx_proxy(env, name, mirror) as port):
        yield Target(url(port), mirror)


@contextlib.contextmanager
def case_router_shadow(env: Env, name: str) -> Iterator[Target]:
    with (fast_backend(env, f"{name}-backend", SHADOW_LATENCY_MS, "mirror") as shadow,
          router_proxy(env, name, shadow) as port):
        yield Target(url(port), shadow)


@contextlib.contextmanager
def case_router_1k(env: Env, name: str) -> Iterator[Target]:
    with router_proxy(env, name, extra_routes=999) as port:
        yield Target(url(port))


@contextlib.contextmanager
def case_router_model(env: Env, name: str) -> Iterator[Target]:
    with router_proxy(env, name, model_match=True) as port:
        yield Target(url(port))


@contextlib.contextmanager
def redis_server(env: Env, name: str) -> Iterator[int]:
    try:
        binary = find_tool("redis-server")
    except BenchError as e:
        raise Unavailable(str(e)) from e
    port = free_port()
    (env.tmp / name).mkdir(exist_ok=True)
    argv = [binary, "--port", str(port), "--bind", HOST, "--save", "", "--appendonly", "no",
            "--dir", str(env.tmp / name)]
    with process(env, name, argv, "backend", port_open(port)):
        yield port


@contextlib.contextmanager
def case_router_cluster(env: Env, name: str) -> Iterator[Target]:
    with redis_server(env, f"{name}-redis") as redis, router_proxy(
            env, name, cluster={"name": "bench", "redis_url": f"redis://{HOST}:{redis}/0"}) as port:
        yield Target(url(port))


@contextlib.contextmanager
def case_nginx_2w(env: Env, name: str) -> Iterator[Target]:
    with nginx_proxy(env, name, workers=2) as port:
        yield Target(url(port))


@contextlib.contextmanager
def case_router_2w(env: Env, name: str) -> Iterator[Target]:
    with redis_server(env, f"{name}-redis") as redis, router_proxy(
            env, name, workers=2,
            cluster={"name": "bench-2w", "redis_url": f"redis://{HOST}:{redis}/0"}) as port:
        yield Target(url(port))


# The order cases take their slices in a round: each ratio's two sides sit next to each other, so
# that the same moment of the machine's (shared, drifting) speed falls on both.
CASES = [
    Case("direct", "wrk -> backend", case_direct),
    Case("nginx", "wrk -> nginx (1 worker, upstream keepalive) -> backend", case_nginx),
    Case("router", "wrk -> router (1 process) -> backend", case_router),
    Case("router-shadow", f"router + 100% shadow to a {SHADOW_LATENCY_MS} ms backend", case_router_shadow),
    Case("router-cluster", "router with cluster counters in a local redis-server", case_router_cluster),
    Case("router-1k-routes", "router with 1,000 routes, the live one last", case_router_1k),
    Case("router-model-match", "router matching the body's model and rewriting it for the backend",
         case_router_model, body=LLM_BODY),
    Case("nginx-mirror", f"nginx + `mirror` of every request to a {SHADOW_LATENCY_MS} ms backend",
         case_nginx_mirror),
    Case("direct-c1", "one connection: wrk -> backend", case_direct, connections=1),
    Case("nginx-c1", "one connection: wrk -> nginx -> backend", case_nginx, connections=1),
    Case("router-c1", "one connection: wrk -> router -> backend", case_router, connections=1),
    Case("nginx-2w", "nginx with worker_processes 2", case_nginx_2w),
    Case("router-2w", "router with workers: 2 (cluster on a local redis-server)", case_router_2w),
]

# (label, numerator case, denominator case): req/s and p99 of one over the other.
RATIOS = [
    ("router / nginx", "router", "nginx"),
    ("router / direct", "router", "direct"),
    ("nginx / direct", "nginx", "direct"),
    ("router-shadow / router", "router-shadow", "router"),
    ("nginx-mirror / nginx", "nginx-mirror", "nginx"),
    ("router-1k-routes / router", "router-1k-routes", "router"),
    ("router-model-match / router", "router-model-match", "router"),
    ("router-cluster / router", "router-cluster", "router"),
    ("router-2w / nginx-2w", "router-2w", "nginx-2w"),
    ("router-2w / router", "router-2w", "router"),
]

# (what, ratio label, column, bound, "min" or "max"): the targets, read from the unpinned view.
TARGETS = [
    ("one process throughput", "router / nginx", "rps", 0.6, "min"),
    ("one process p99", "router / nginx", "p99", 1.5, "max"),
    ("200 ms shadow throughput", "router-shadow / router", "rps", 0.9, "min"),
    ("200 ms shadow p99", "router-shadow / router", "p99", 1.15, "max"),
    ("cluster throughput", "router-cluster / router", "rps", 0.95, "min"),
    ("cluster p99", "router-cluster / router", "p99", 1.1, "max"),
    ("workers: 2 vs nginx 2 workers", "router-2w / nginx-2w", "rps", 0.6, "min"),
]


# --- load ------------------------------------------------------------------------

@dataclass(frozen=True)
class Load:
    connections: int
    duration_s: int
    warmup_s: int
    timeout_s: int


@dataclass(frozen=True)
class Measurement:
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    non_2xx: int
    socket_errors: dict[str, int]

    @property
    def errors(self) -> int:
        return self.non_2xx + sum(self.socket_errors.values())


_TIME_UNITS_MS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}


def to_ms(text: str) -> float:
    """wrk's '812.00us', '1.23ms', '2.01s' as milliseconds."""
    m = re.fullmatch(r"([\d.]+)([a-z]+)", text)
    if not m or m[2] not in _TIME_UNITS_MS:
        raise ValueError(f"unknown wrk time {text!r}")
    return float(m[1]) * _TIME_UNITS_MS[m[2]]


def parse_wrk(out: str) -> Measurement:
    rps = re.search(r"^Requests/sec:\s+([\d.]+)", out, re.M)
    if not rps:
        raise BenchError(f"cannot read wrk output:\n{out}")
    pct = {p: to_ms(v) for p, v in re.findall(r"^\s+(50|99)(?:\.0+)?%\s+(\S+)", out, re.M)}
    total = re.search(r"(\d+) requests in", out)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    kinds = ("connect", "read", "write", "timeout")
    return Measurement(
        rps=float(rps[1]), p50_ms=pct.get("50", float("nan")), p99_ms=pct.get("99", float("nan")),
        requests=int(total[1]) if total else 0, non_2xx=int(non2xx[1]) if non2xx else 0,
        socket_errors={k: int(sock[i + 1]) if sock else 0 for i, k in enumerate(kinds)})


def wrk(env: Env, target: str, seconds: int, load: Load, watch: ConnWatch | None = None,
        body: str = BODY) -> Measurement:
    script = env.tmp / f"post-{abs(hash(body))}.lua"
    if not script.exists():
        script.write_text(WRK_SCRIPT.replace(BODY, body))
    argv = [env.wrk, "-t1", f"-c{load.connections}", f"-d{seconds}s", "--latency",
            f"--timeout={load.timeout_s}s", "-s", str(script), target]
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, preexec_fn=_child_setup(env.pins["client"]))
    try:
        # The watcher's thread starts after the fork: preexec_fn and threads do not mix.
        with watch or contextlib.nullcontext():
            out, _ = proc.communicate(timeout=seconds + load.timeout_s + 30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if proc.returncode:
        raise BenchError(f"wrk exited with code {proc.returncode}:\n{out}")
    return parse_wrk(out)


class ConnWatch:
    """Samples the peak of established connections into a local port (proof of mirroring)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> ConnWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            self.peak = max(self.peak, self.count())

    def count(self) -> int:
        lines = Path("/proc/net/tcp").read_text().splitlines()[1:]
        return sum(1 for fields in map(str.split, lines)
                   if int(fields[1].rsplit(":", 1)[1], 16) == self.port and fields[3] == "01")


# --- running and reporting -------------------------------------------------------

@dataclass
class Row:
    """One case's outcome. `warnings` make its numbers suspect; `notes` are information. `runs`
    holds one measurement per round, in round order (a ratio pairs the two sides' rounds);
    `result` is their median."""

    case: str
    about: str
    result: Measurement | None = None
    unavailable: str = ""
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    runs: list[Measurement] = field(default_factory=list)

    @property
    def suspect(self) -> bool:
        return bool(self.warnings or (self.result and self.result.errors))


@dataclass
class Slot:
    """A started case: where it takes load and which processes are its own."""

    case: Case
    row: Row
    target: Target
    load: Load
    processes: frozenset[str]


def start_case(env: Env, stack: contextlib.ExitStack, case: Case, load: Load) -> Slot | Row:
    """Start a case's processes (stopped when `stack` closes); its Row alone if it cannot run."""
    print(f"== {case.name}: {case.about}", file=sys.stderr, flush=True)
    row = Row(case.name, case.about)
    before = set(env.live)
    try:
        target = stack.enter_context(case.start(env, case.name))
    except Unavailable as e:
        row.unavailable = str(e)
        print(f"   n/a: {e}", file=sys.stderr, flush=True)
        return row
    if case.connections:
        load = Load(case.connections, load.duration_s, load.warmup_s, load.timeout_s)
    return Slot(case, row, target, load, frozenset(set(env.live) - before))


def warm_up(env: Env, slot: Slot) -> None:
    """Discarded load before the first round. For a mirror case it also proves that copies go out:
    the watcher walks /proc/net/tcp, a kernel walk over every socket that contends with the proxy's
    own socket calls, so it looks only here and stays out of the measured rounds."""
    watch = ConnWatch(slot.target.mirror_port) if slot.target.mirror_port else None
    wrk(env, slot.target.url, max(slot.load.warmup_s, 1), slot.load, watch, slot.case.body)
    if watch:
        slot.row.notes.append(f"mirror backend peak connections (warm-up): {watch.peak}")
        if not watch.peak:
            slot.row.warnings.append("the mirror backend got no connections: nothing was mirrored, "
                                     "so this measured a plain proxy")


def measure(env: Env, slot: Slot) -> None:
    """One measured slice of this case's round."""
    slot.row.runs.append(wrk(env, slot.target.url, slot.load.duration_s, slot.load, None, slot.case.body))
    slot.row.warnings += [w for w in env.exited(slot.processes) if w not in slot.row.warnings]


def fmt_table(rows: list[Row]) -> str:
    lines = [f"{'case':<20} {'req/s':>10} {'p50 ms':>9} {'p99 ms':>9} {'errors':>8}"]
    for r in rows:
        if r.result is None:
            lines.append(f"{r.case:<20} n/a (not implemented or did not start; reason below)")
            continue
        m = r.result
        flag = "  <-- ERRORS" if m.errors else "  <-- SUSPECT, see below" if r.warnings else ""
        lines.append(f"{r.case:<20} {m.rps:>10.0f} {m.p50_ms:>9.2f} {m.p99_ms:>9.2f} {m.errors:>8}{flag}")
    return "\n".join(lines)


def ratios(rows: list[Row]) -> list[dict[str, Any]]:
    """Each RATIOS pair that ran, the median of its per-round ratios; `suspect` marks a pair where
    either side had errors or warnings."""
    by_name = {r.case: r for r in rows if r.result}
    out = []
    for label, num, den in RATIOS:
        a, b = by_name.get(num), by_name.get(den)
        if a and b and a.result and b.result and b.result.rps and b.result.p99_ms:
            out.append({"label": label, "rps": paired(a, b, lambda x, y: x.rps / y.rps),
                        "p99": paired(a, b, lambda x, y: x.p99_ms / y.p99_ms), "suspect": a.suspect or b.suspect})
    return out


def fmt_ratios(rows: list[Row]) -> str:
    lines = [f"{'ratio':<30} {'req/s':>8} {'p99':>8}"]
    lines += [f"{r['label']:<30} {r['rps']:>8.3g} {r['p99']:>8.3g}"
              + ("  <-- a side is suspect" if r["suspect"] else "") for r in ratios(rows)]
    return "\n".join(lines)


def fmt_details(rows: list[Row]) -> str:
    lines = []
    for r in rows:
        if r.unavailable:
            lines.append(f"{r.case}: n/a: {r.unavailable}")
        if r.result and r.result.errors:
            sock = ", ".join(f"{k} {v}" for k, v in r.result.socket_errors.items())
            lines.append(f"{r.case}: ERRORS: {r.result.non_2xx} non-2xx/3xx of {r.result.requests}; "
                         f"socket errors: {sock}")
        lines += [f"{r.case}: WARNING: {w}" for w in r.warnings]
        lines += [f"{r.case}: {note}" for note in r.notes]
    return "\n".join(lines)


def write_json(path: Path, rows: list[Row], meta: dict[str, Any]) -> None:
    cases = []
    for r in rows:
        m = asdict(r.result) | {"errors": r.result.errors} if r.result else None
        cases.append({"name": r.case, "about": r.about, "status": "ok" if m else "n/a",
                      "reason": r.unavailable, "warnings": r.warnings, "notes": r.notes, **(m or {}),
                      "runs": [asdict(run) for run in r.runs]})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"meta": meta, "cases": cases, "ratios": ratios(rows)}, indent=2) + "\n")


# --- setup -------------------------------------------------------------------------

def find_tool(name: str) -> str:
    # /usr/sbin is not on a normal user's PATH on Debian, and nginx lives there.
    path = os.environ.get("PATH", "") + ":/usr/sbin:/sbin"
    found = shutil.which(name, path=path)
    if not found:
        raise BenchError(f"{name} not found; install the bench tools with `make deps`")
    return found


def plan_pins(enabled: bool) -> dict[str, frozenset[int] | None]:
    """wrk gets a core of its own; proxy and backend share the next one on a 2-core box.

    The load generator then never steals CPU from the side being measured, and every
    extra instruction the proxy spends shows up as lost throughput. The slow mirror/shadow
    backend (a separate model server in production) sits with the client, so its wake-ups do
    not preempt the proxy whose live latency is being measured; nginx's mirror and the router's
    shadow get the same placement.
    """
    cpus = sorted(os.sched_getaffinity(0))
    if not enabled or len(cpus) < 2:
        return dict.fromkeys(("client", "proxy", "backend", "mirror"))
    backend = cpus[2] if len(cpus) > 2 else cpus[1]
    return {"client": frozenset({cpus[0]}), "proxy": frozenset({cpus[1]}), "backend": frozenset({backend}),
            "mirror": frozenset({cpus[0]})}


def version(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=5)
    except OSError:
        return "?"
    return ((out.stdout + out.stderr).strip().splitlines() or ["?"])[0]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=int, default=1,
                   help="measured seconds per case and round (default 1)")
    p.add_argument("--warmup", type=int, default=1,
                   help="warm-up seconds per case, not measured (at least 1: mirror cases prove their copies in it)")
    p.add_argument("--repeat", type=int, default=15,
                   help="rounds: each takes one slice of every case; the tables show medians (default 15)")
    p.add_argument("--views", default="unpinned,pinned",
                   help="unpinned (as users run it), pinned (steadier: wrk, proxy and backend on their own "
                        "cores), or both (default)")
    p.add_argument("--connections", type=int, default=32)
    p.add_argument("--cases", default=",".join(c.name for c in CASES),
                   help="comma-separated subset of: " + ", ".join(c.name for c in CASES))
    p.add_argument("--out", type=Path, default=OUT_DIR / "results.json")
    return p.parse_args(argv)


def select(names: str) -> list[Case]:
    known = {c.name: c for c in CASES}
    wanted = [n.strip() for n in names.split(",") if n.strip()]
    unknown = [n for n in wanted if n not in known]
    if unknown:
        raise BenchError(f"unknown case(s) {', '.join(unknown)}; known: {', '.join(known)}")
    return [known[n] for n in wanted]


class Stopped(BaseException):
    """SIGTERM or SIGHUP: unwinds through the context managers, stopping every process."""


def _on_signal(signum: int, _frame: object) -> NoReturn:
    raise Stopped(signum)


def run(args: argparse.Namespace) -> int:
    cases = select(args.cases)
    load = Load(args.connections, args.duration, args.warmup, timeout_s=5)
    views = [v.strip() for v in args.views.split(",") if v.strip()]
    if not views or any(v not in ("unpinned", "pinned") for v in views):
        raise BenchError(f"--views takes unpinned and/or pinned, got {args.views!r}")
    results: dict[str, list[Row]] = {}
    metas: dict[str, dict[str, Any]] = {}
    for view in views:
        results[view], metas[view] = run_view(args, cases, load, pin=view == "pinned")
    for view in views:
        rows = results[view]
        print(f"\n## {view} ({metas[view]['setup']}; medians of {args.repeat} rounds)\n")
        print(fmt_table(rows) + "\n\n" + fmt_ratios(rows))
        added = added_latency(rows)
        if added:
            print("\n" + added)
        details = fmt_details(rows)
        if details:
            print("\n" + details)
    view = "unpinned" if "unpinned" in results else views[0]
    print("\n" + fmt_targets(results[view], view))
    out: dict[str, Any] = {}
    for view in views:
        path = args.out.with_name(f"{args.out.stem}-{view}{args.out.suffix}")
        write_json(path, results[view], metas[view])
        out[view] = str(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path)
    print(f"\nwrote {', '.join(out.values())}")
    return 0


def run_view(args: argparse.Namespace, cases: list[Case], load: Load, *, pin: bool) -> tuple[list[Row], dict[str, Any]]:
    """Every case started at once, then `repeat` rounds in which each case in turn takes a short
    slice of load (the others idle), the order reversed every other round.

    This machine's speed drifts by 10-30% within seconds (other tenants of the host: a pure-Python
    loop's time moves that much between two runs a second apart). A ratio of two cases measured
    far apart in time mostly measures that drift; measured in alternating slices, both sides meet
    the same drift, and each ratio is the median of its per-round ratios."""
    venv = ROOT / ".venv" / "bin" / "python"
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp, contextlib.ExitStack() as stack:
        env = Env(Path(tmp), str(venv) if venv.exists() else sys.executable,
                  find_tool("nginx"), find_tool("wrk"), plan_pins(pin))
        client_cpus = env.pins["client"]
        if client_cpus:
            # The harness itself (and the thread that samples /proc/net/tcp during mirror cases,
            # a kernel walk over every socket) stays off the proxy's core.
            os.sched_setaffinity(0, client_cpus)
        else:
            os.sched_setaffinity(0, range(os.cpu_count() or 1))
        stack.callback(_keep_logs, env.tmp, args.out.parent / "logs")
        env.backend_port = stack.enter_context(fast_backend(env, "backend"))
        meta = _meta(env, load)
        print(f"bench ({'pinned' if pin else 'unpinned'}): {meta['setup']}", file=sys.stderr, flush=True)
        if meta["loadavg_1m_before"] > 0.5:
            print(f"bench: load average {meta['loadavg_1m_before']:.2f} before starting: other work on "
                  "this machine will skew the numbers", file=sys.stderr, flush=True)
        started = [start_case(env, stack, case, load) for case in cases]
        slots = [s for s in started if isinstance(s, Slot)]
        for slot in slots:
            warm_up(env, slot)
        for i in range(args.repeat):
            print(f"   round {i + 1} of {args.repeat}", file=sys.stderr, flush=True)
            for slot in slots if i % 2 == 0 else reversed(slots):
                measure(env, slot)
    rows = [s.row if isinstance(s, Slot) else s for s in started]
    for row in rows:
        row.result = median_of(row.runs)
    return rows, meta


def median_of(runs: list[Measurement]) -> Measurement | None:
    """One figure per case: the median of each over the rounds."""
    if not runs:
        return None
    return Measurement(
        rps=statistics.median(m.rps for m in runs), p50_ms=statistics.median(m.p50_ms for m in runs),
        p99_ms=statistics.median(m.p99_ms for m in runs), requests=sum(m.requests for m in runs),
        non_2xx=sum(m.non_2xx for m in runs),
        socket_errors={k: sum(m.socket_errors[k] for m in runs) for k in runs[0].socket_errors})


def paired(num: Row, den: Row, figure: Callable[[Measurement, Measurement], float]) -> float:
    """The median over rounds of `figure(numerator's run, denominator's run)` in the same round."""
    return statistics.median(figure(a, b) for a, b in zip(num.runs, den.runs, strict=True))


def _added_ratio(r: Measurement, n: Measurement, d: Measurement) -> float:
    return (r.p50_ms - d.p50_ms) / (n.p50_ms - d.p50_ms) if n.p50_ms > d.p50_ms else float("inf")


def added(rows: list[Row]) -> tuple[float, float, float] | None:
    """Latency a hop adds at low load (one connection), router's and nginx's p50 over direct in
    ms (medians), and the router's over nginx's (the median of per-round ratios)."""
    by = {r.case: r for r in rows if r.result}
    d, n, r = by.get("direct-c1"), by.get("nginx-c1"), by.get("router-c1")
    if not (d and n and r and d.result and n.result and r.result):
        return None
    ratio = statistics.median(_added_ratio(*three) for three in zip(r.runs, n.runs, d.runs, strict=True))
    return r.result.p50_ms - d.result.p50_ms, n.result.p50_ms - d.result.p50_ms, ratio


def added_latency(rows: list[Row]) -> str:
    got = added(rows)
    if got is None:
        return ""
    router_added, nginx_added, ratio = got
    return (f"added p50 at one connection: router {router_added * 1000:.0f} us, nginx {nginx_added * 1000:.0f} us "
            f"over direct (medians); router / nginx {ratio:.2f} (median of per-round ratios)")


def fmt_targets(rows: list[Row], view: str = "unpinned") -> str:
    """One line: each target met or not (from the view users run: unpinned)."""
    got = {r["label"]: r for r in ratios(rows)}
    parts = []
    for what, label, column, bound, kind in TARGETS:
        pair = got.get(label)
        if pair is None:
            parts.append(f"{what}: n/a")
            continue
        value = pair[column]
        ok = value >= bound if kind == "min" else value <= bound
        parts.append(f"{what} {value:.2f} {'>=' if kind == 'min' else '<='} {bound:g} {'ok' if ok else 'MISSED'}")
    lat = added(rows)
    if lat is not None:
        parts.append(f"added latency {lat[2]:.2f} <= 1.5 {'ok' if lat[2] <= 1.5 else 'MISSED'}")
    return f"targets ({view}, medians of per-round ratios): " + "; ".join(parts)


def _meta(env: Env, load: Load) -> dict[str, Any]:
    pins = {role: sorted(cpus) if cpus else None for role, cpus in env.pins.items()}
    return {
        "time": datetime.now(UTC).isoformat(timespec="seconds"),
        "setup": (f"{load.connections} connections, 1 wrk thread, {load.duration_s} s per case and round after "
                  f"{load.warmup_s} s warm-up; cpus {sorted(os.sched_getaffinity(0))}, pinned {pins}"),
        "load": asdict(load), "pins": pins, "cpu_count": os.cpu_count(),
        "machine": platform.platform(), "python": platform.python_version(),
        "nginx": version([env.nginx, "-v"]), "wrk": version([env.wrk, "--version"]),
        # Before any case ran, so this is other work competing for the same cores.
        "loadavg_1m_before": os.getloadavg()[0],
    }


def _keep_logs(tmp: Path, dest: Path) -> None:
    """Copy each process's log out of the scratch dir before it is deleted."""
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    for log in tmp.glob("**/*.log"):
        shutil.copy(log, dest / f"{log.parent.name}-{log.name}" if log.parent != tmp else dest / log.name)


def main(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGHUP, _on_signal)
    try:
        return run(parse_args(argv))
    except BenchError as e:
        print(f"bench: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("bench: interrupted; stopped everything it started", file=sys.stderr)
        return 128 + signal.SIGINT
    except Stopped as e:
        print(f"bench: got signal {e.args[0]}; stopped everything it started", file=sys.stderr)
        return 128 + int(e.args[0])


if __name__ == "__main__":
    sys.exit(main())
