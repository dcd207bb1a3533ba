"""The Dockerfile, deploy/docker-compose.yml and deploy/kubernetes/ name things that exist.

No container engine runs where the tests run, so nothing is built or started. Instead every path,
port and command these files name is checked against the project: files in the repository, the
console script and its parser, the routing files' own validation, the example backend's --help,
and the reload sidecar's script, run against a fake admin listener.
"""

from __future__ import annotations

import fnmatch
import hashlib
import importlib.util
import json
import re
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path, PurePosixPath
from types import ModuleType
from typing import Any, NamedTuple
from urllib.parse import urlsplit

import pytest
import yaml

from router.cli import build_parser
from router.config import Config, parse_config

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
KUBE = DEPLOY / "kubernetes"
CONFIG_PATH = "/etc/model-router/router.yaml"
STATE_DIR = "/var/lib/model-router"
SERVE = ["model-router", "serve", "--config", CONFIG_PATH]
ANY_HOST = {"0.0.0.0", "::"}
LOOPBACK = {"127.0.0.1", "localhost", "::1"}
Doc = dict[str, Any]  # a parsed YAML mapping


# -- parsing ---------------------------------------------------------------------------------

class Instruction(NamedTuple):
    keyword: str  # upper case
    args: str
    stage: int  # which FROM it follows, from 0


def parse_dockerfile(text: str) -> list[Instruction]:
    """Instructions with continuation lines joined; comments and blank lines dropped."""
    out: list[Instruction] = []
    stage, pending = -1, ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, args = (pending + line).partition(" ")
        pending = ""
        stage += keyword.upper() == "FROM"
        out.append(Instruction(keyword.upper(), args.strip(), stage))
    assert not pending, "the Dockerfile ends inside a continued line"
    return out


def exec_form(args: str) -> list[str]:
    # Shell form would run /bin/sh as PID 1, which does not pass SIGTERM on: the router would never drain.
    assert args.startswith("["), f"use the exec (JSON) form, not {args!r}"
    argv = json.loads(args)
    assert isinstance(argv, list) and all(isinstance(a, str) for a in argv)
    return argv


def copies(instructions: list[Instruction]) -> list[tuple[list[str], str]]:
    """(sources, destination) of every COPY/ADD from the build context (not --from a stage)."""
    out = []
    for ins in instructions:
        if ins.keyword not in ("COPY", "ADD"):
            continue
        words = ins.args.split()
        if any(w.startswith("--from") for w in words):
            continue
        paths = [w for w in words if not w.startswith("--")]
        out.append((paths[:-1], paths[-1]))
    return out


def container_port(entry: str | int | Doc) -> int:
    """The container side of a compose `ports` entry: "8080:8080", "127.0.0.1:9901:9901/tcp", {target: ...}."""
    if isinstance(entry, dict):
        return int(entry["target"])
    return int(str(entry).rsplit(":", 1)[-1].split("/")[0])


def urls_in(text: str) -> list[Any]:
    return [urlsplit(u) for u in re.findall(r"https?://[^\s'\"]+", text)]


# -- fixtures --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def docker() -> list[Instruction]:
    return parse_dockerfile((ROOT / "Dockerfile").read_text())


@pytest.fixture(scope="module")
def final(docker: list[Instruction]) -> list[Instruction]:
    last = max(i.stage for i in docker)
    return [i for i in docker if i.stage == last]


@pytest.fixture(scope="module")
def router_yaml() -> Config:
    return parse_config((DEPLOY / "router.yaml").read_text(), "deploy/router.yaml")


@pytest.fixture(scope="module")
def compose() -> Doc:
    data: Doc = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    return data


@pytest.fixture(scope="module")
def router_services(compose: Doc) -> list[tuple[str, Doc]]:
    """The compose services that mount a routing file at CONFIG_PATH: the members of one cluster."""
    found = [(name, svc) for name, svc in compose["services"].items()
             if any(str(v).split(":")[1:2] == [CONFIG_PATH] for v in svc.get("volumes", []))]
    assert len(found) == 2, f"two compose services should mount {CONFIG_PATH} (one cluster), found {len(found)}"
    return found


@pytest.fixture(scope="module", params=[0, 1])
def router_service(router_services: list[tuple[str, Doc]], request: pytest.FixtureRequest) -> tuple[str, Doc]:
    return router_services[request.param]


@pytest.fixture(scope="module")
def kube_docs() -> list[Doc]:
    files = sorted(KUBE.glob("*.yaml")) + sorted(KUBE.glob("*.yml"))
    assert files, "no manifests in deploy/kubernetes/"
    return [doc for f in files for doc in yaml.safe_load_all(f.read_text()) if doc is not None]


def kind(docs: list[Doc], name: str) -> list[Doc]:
    return [d for d in docs if d["kind"] == name]


@pytest.fixture(scope="module")
def deployment(kube_docs: list[Doc]) -> Doc:
    found = [d for d in kind(kube_docs, "Deployment") if d["metadata"]["name"] == "model-router"]
    assert len(found) == 1
    return found[0]


@pytest.fixture(scope="module")
def redis_deployment(kube_docs: list[Doc]) -> Doc:
    found = [d for d in kind(kube_docs, "Deployment") if d["metadata"]["name"] == "model-router-redis"]
    assert len(found) == 1, "deploy/kubernetes/ should run the cluster's Redis (model-router-redis)"
    return found[0]


@pytest.fixture(scope="module")
def pod(deployment: Doc) -> Doc:
    spec: Doc = deployment["spec"]["template"]["spec"]
    return spec


@pytest.fixture(scope="module")
def router_container(pod: Doc) -> Doc:
    found: list[Doc] = [c for c in pod["containers"] if c.get("command", []) + c.get("args", []) == SERVE]
    assert len(found) == 1, f"exactly one container should run {' '.join(SERVE)}"
    return found[0]


@pytest.fixture(scope="module")
def sidecar(pod: Doc, router_container: Doc) -> Doc:
    others: list[Doc] = [c for c in pod["containers"] if c is not router_container]
    assert len(others) == 1, "the pod should hold the router and one reload sidecar"
    return others[0]


def mount_at(container: Doc, path: str) -> Doc:
    found: list[Doc] = [m for m in container.get("volumeMounts", []) if m["mountPath"] == path]
    assert found, f"container {container['name']} mounts nothing at {path}"
    return found[0]


@pytest.fixture(scope="module")
def configmap_yaml(kube_docs: list[Doc], pod: Doc, router_container: Doc) -> Config:
    """The routing file the router container reads, taken from the ConfigMap behind its mount."""
    config_dir, filename = CONFIG_PATH.rsplit("/", 1)
    mount = mount_at(router_container, config_dir)
    assert "subPath" not in mount, "a subPath mount never sees ConfigMap updates"
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    name = volume["configMap"]["name"]
    maps = [d for d in kind(kube_docs, "ConfigMap") if d["metadata"]["name"] == name]
    assert len(maps) == 1, f"no ConfigMap {name} in deploy/kubernetes/"
    assert filename in maps[0]["data"], f"ConfigMap {name} has no key {filename}"
    return parse_config(maps[0]["data"][filename], "configmap")


def port_number(container: Doc, port: int | str) -> int:
    """A container port given by number or by name."""
    if isinstance(port, int):
        return port
    named = {p["name"]: p["containerPort"] for p in container["ports"] if "name" in p}
    assert port in named, f"container {container['name']} has no port named {port}"
    return int(named[port])


def secret_env(container: Doc, var: str) -> Doc:
    env = {e["name"]: e for e in container.get("env", [])}
    assert var in env, f"container {container['name']} does not set {var}"
    ref: Doc = env[var].get("valueFrom", {}).get("secretKeyRef")
    assert ref, f"{var} of container {container['name']} should come from a Secret"
    return ref


def env_value(container: Doc, var: str) -> str:
    values = {e["name"]: e.get("value") for e in container.get("env", [])}
    assert values.get(var), f"container {container['name']} does not set {var}"
    return str(values[var])


class FakeAdmin:
    """A stand-in admin listener that records requests and answers with queued statuses."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, str | None]] = []
        self.statuses: list[int] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                fake.requests.append((self.command, self.path, self.headers.get("Authorization")))
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                status = fake.statuses.pop(0) if fake.statuses else 200
                body = json.dumps({"status": status}).encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = _answer

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"


@pytest.fixture
def fake_admin() -> Iterator[FakeAdmin]:
    fake = FakeAdmin()
    thread = threading.Thread(target=fake.server.serve_forever, daemon=True)
    thread.start()
    yield fake
    fake.server.shutdown()
    fake.server.server_close()
    thread.join()


# -- the routing files -----------------------------------------------------------------------

@pytest.mark.parametrize("which", ["router_yaml", "configmap_yaml"])
def test_container_routing_files_validate_and_listen_on_all_interfaces(which: str,
                                                                      request: pytest.FixtureRequest) -> None:
    config: Config = request.getfixturevalue(which)  # parse_config raised already if it were invalid
    assert config.listen.host in ANY_HOST, "a container listening on loopback is unreachable"
    assert config.admin.listen.host in ANY_HOST
    assert str(config.state_dir) == STATE_DIR


# -- Dockerfile ------------------------------------------------------------------------------

def test_dockerfile_copies_exist_and_are_not_dockerignored(docker: list[Instruction]) -> None:
    ignored = [p.strip().lstrip("/") for p in (ROOT / ".dockerignore").read_text().splitlines()
               if p.strip() and not p.startswith("#")]
    assert not any(p.startswith("!") for p in ignored), "this check does not understand ! exceptions"
    sources = [s for srcs, _ in copies(docker) for s in srcs]
    assert sources
    for src in sources:
        assert (ROOT / src).exists(), f"the Dockerfile copies {src}, which does not exist"
        parts = PurePosixPath(src).parts
        prefixes = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
        hits = [p for p in ignored for prefix in prefixes if fnmatch.fnmatch(prefix, p)]
        assert not hits, f".dockerignore pattern {hits[0]!r} leaves {src} out of the build context"


def test_image_command_is_the_serve_console_script(final: list[Instruction]) -> None:
    entry = [exec_form(i.args) for i in final if i.keyword == "ENTRYPOINT"][-1:]
    cmd = [exec_form(i.args) for i in final if i.keyword == "CMD"][-1:]
    argv = [*(entry[0] if entry else []), *(cmd[0] if cmd else [])]
    assert argv == SERVE
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts.get(argv[0]) == "router.cli:main"
    args = build_parser().parse_args(argv[1:])
    assert (args.command, args.config) == ("serve", CONFIG_PATH)


def test_image_default_config_is_deploy_router_yaml(docker: list[Instruction]) -> None:
    assert (["deploy/router.yaml"], CONFIG_PATH) in copies(docker)


def test_image_user_is_numeric_and_not_root(final: list[Instruction]) -> None:
    users = [i.args for i in final if i.keyword == "USER"]
    assert users, "the final stage never leaves root"
    uid = users[-1].split(":")[0]
    # Kubernetes' runAsNonRoot can only check a numeric user without the image's passwd file.
    assert uid.isdigit() and int(uid) != 0, f"USER {users[-1]}"


def test_image_exposes_the_listen_and_admin_ports(final: list[Instruction], router_yaml: Config) -> None:
    exposed = {int(p.split("/")[0]) for i in final if i.keyword == "EXPOSE" for p in i.args.split()}
    assert exposed == {router_yaml.listen.port, router_yaml.admin.listen.port}


def test_image_state_dir_is_a_volume(final: list[Instruction]) -> None:
    volumes = [v for i in final if i.keyword == "VOLUME"
               for v in (json.loads(i.args) if i.args.startswith("[") else i.args.split())]
    assert STATE_DIR in volumes


def healthcheck_code(final: list[Instruction]) -> str:
    checks = [i.args for i in final if i.keyword == "HEALTHCHECK"]
    assert checks, "no HEALTHCHECK"
    _, found, command = checks[-1].partition("CMD ")
    assert found, "HEALTHCHECK needs CMD"
    argv = exec_form(command)
    assert argv[:2] == ["python3", "-c"], "slim images have no curl or wget: use the image's python3"
    return argv[2]


def test_healthcheck_probes_healthz_on_the_admin_port(final: list[Instruction], router_yaml: Config) -> None:
    [url] = urls_in(healthcheck_code(final))
    assert (url.hostname, url.port, url.path) == ("127.0.0.1", router_yaml.admin.listen.port, "/-/healthz")


@pytest.mark.parametrize(("status", "healthy"), [(200, True), (503, False)])
def test_healthcheck_command_fails_on_503(final: list[Instruction], fake_admin: FakeAdmin,
                                          status: int, healthy: bool) -> None:
    code = healthcheck_code(final)
    [url] = urls_in(code)
    fake_admin.statuses.append(status)
    run = subprocess.run([sys.executable, "-c", code.replace(f"http://{url.netloc}", fake_admin.url)],
                         capture_output=True, timeout=30)
    assert fake_admin.requests == [("GET", "/-/healthz", None)]
    assert (run.returncode == 0) == healthy
    assert run.returncode in (0, 1), "Docker reserves exit status 2"


def test_package_data_reaches_the_image(final: list[Instruction]) -> None:
    """Non-Python files of the packages are in the wheel (package-data) or copied beside it."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    package_data = project.get("tool", {}).get("setuptools", {}).get("package-data", {})
    [base] = [i.args.split()[0] for i in final if i.keyword == "FROM"]
    version = re.fullmatch(r"python:(\d+\.\d+)\D.*", base)
    assert version, f"final stage {base} is not an official python image"
    minimum = re.fullmatch(r">=(\d+)\.(\d+)", project["project"]["requires-python"])
    assert minimum and tuple(map(int, version[1].split("."))) >= (int(minimum[1]), int(minimum[2]))
    site = f"/usr/local/lib/python{version[1]}/site-packages"
    copied = {dest: srcs[0] for srcs, dest in copies(final) if len(srcs) == 1}
    for package in ("router", "backends"):
        for f in sorted((ROOT / package).rglob("*")):
            # .so: the mypyc build of the data path (make native); the image builds its own into the wheel,
            # from the sources of its C extensions (.c) and their type stubs (.pyi), which run nowhere.
            if not f.is_file() or f.suffix in (".py", ".pyc", ".so", ".c", ".pyi") or "__pycache__" in f.parts:
                continue
            rel = f.relative_to(ROOT / package).as_posix()
            if any(fnmatch.fnmatch(rel, g) for g in [*package_data.get(package, []), *package_data.get("*", [])]):
                continue
            target = f"{site}/{package}/{rel}"
            sources = [s + target[len(d):] for d, s in copied.items() if target == d or target.startswith(d + "/")]
            assert f"{package}/{rel}" in sources, f"{package}/{rel} is neither package data nor copied to {site}"


# -- docker compose --------------------------------------------------------------------------

def test_compose_builds_this_dockerfile_for_every_service_it_runs(compose: Doc) -> None:
    built = {name: svc for name, svc in compose["services"].items() if "build" in svc}
    assert built
    for name, svc in built.items():
        context = (DEPLOY / svc["build"]["context"]).resolve()
        assert context == ROOT and (context / svc["build"].get("dockerfile", "Dockerfile")).is_file(), name
    # Compose v2 pulls (and fails on) a locally built image named by a service without `build`.
    tags = {svc["image"] for svc in built.values()}
    for name, svc in compose["services"].items():
        assert name in built or svc.get("image") not in tags, f"{name} runs the local image without build"


def test_compose_bind_mounts_exist(compose: Doc) -> None:
    mounts = [str(v).split(":")[0] for svc in compose["services"].values() for v in svc.get("volumes", [])]
    files = [m for m in mounts if m.startswith((".", "/"))]
    assert files
    for m in files:
        assert (DEPLOY / m).exists(), f"compose mounts {m}, which does not exist next to docker-compose.yml"


def test_compose_router_runs_serve_with_config_state_and_token(router_service: tuple[str, Doc],
                                                               compose: Doc, router_yaml: Config) -> None:
    _, svc = router_service
    assert svc.get("command", SERVE) == SERVE, "the router service should run the image's serve command"
    volumes = {str(v).split(":")[1]: str(v).split(":")[0] for v in svc["volumes"]}
    assert (DEPLOY / volumes[CONFIG_PATH]).resolve() == DEPLOY / "router.yaml"
    assert volumes.get(STATE_DIR) in compose.get("volumes", {}), "the state dir should be a named volume"
    assert router_yaml.admin.token_env in svc["environment"]
    assert router_yaml.cluster is not None and router_yaml.cluster.redis_url_env
    redis_url = urlsplit(svc["environment"][router_yaml.cluster.redis_url_env])
    redis = compose["services"].get(str(redis_url.hostname), {})
    assert "redis-server" in " ".join(map(str, redis.get("command", []))), f"no compose Redis at {redis_url.hostname}"
    assert redis_url.port == 6379 and svc["depends_on"][redis_url.hostname]["condition"] == "service_healthy"
    grace = re.fullmatch(r"(\d+)s", str(svc["stop_grace_period"]))
    assert grace and int(grace[1]) > router_yaml.limits.drain_timeout


def test_compose_publishes_the_listen_and_admin_ports(router_service: tuple[str, Doc],
                                                     router_yaml: Config) -> None:
    published = {container_port(p) for p in router_service[1]["ports"]}
    assert published == {router_yaml.listen.port, router_yaml.admin.listen.port}


@pytest.fixture(scope="module")
def backend_options() -> set[str]:
    help_text = subprocess.run([sys.executable, "-m", "backends.model_server", "--help"], cwd=ROOT,
                               capture_output=True, text=True, timeout=60, check=True).stdout
    return set(re.findall(r"--[a-z][a-z0-9-]*", help_text))


def backend_commands(compose: Doc) -> dict[str, list[str]]:
    return {name: [str(a) for a in svc["command"]] for name, svc in compose["services"].items()
            if svc.get("command", [None])[:2] == ["python", "-m"]}


def test_compose_backend_commands_name_real_modules_and_options(compose: Doc,
                                                                backend_options: set[str]) -> None:
    commands = backend_commands(compose)
    assert len(commands) >= 2
    for name, argv in commands.items():
        assert (ROOT / (argv[2].replace(".", "/") + ".py")).is_file(), f"{name}: no module {argv[2]}"
        unknown = {a for a in argv[3:] if a.startswith("--")} - backend_options
        assert not unknown, f"{name}: {sorted(unknown)} not in `python -m {argv[2]} --help`"
        assert argv[argv.index("--host") + 1] in ANY_HOST, f"{name} must listen beyond loopback"


def test_router_backends_are_compose_services_on_their_ports(compose: Doc, router_yaml: Config) -> None:
    commands = backend_commands(compose)
    for backend in router_yaml.backends.values():
        for endpoint in backend.endpoints:
            assert endpoint.host in commands, f"{endpoint.url}: no compose service {endpoint.host} runs a backend"
            argv = commands[endpoint.host]
            assert int(argv[argv.index("--port") + 1]) == endpoint.port, endpoint.url


def test_compose_backend_healthchecks_probe_their_own_port(compose: Doc) -> None:
    # The image's HEALTHCHECK probes the router's admin port: backends must replace it.
    for name, argv in backend_commands(compose).items():
        test = compose["services"][name]["healthcheck"]["test"]
        [url] = urls_in(" ".join(test))
        assert url.port == int(argv[argv.index("--port") + 1]), name


def test_compose_routers_publish_different_host_ports(router_services: list[tuple[str, Doc]]) -> None:
    published = [str(p).rsplit(":", 1)[0] for _, svc in router_services for p in svc["ports"]]
    assert len(published) == len(set(published)), published


def test_prometheus_scrapes_every_router_admin_port(compose: Doc, router_services: list[tuple[str, Doc]],
                                                    router_yaml: Config) -> None:
    config = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    jobs = config["scrape_configs"]
    targets = [(t, job.get("metrics_path", "/metrics")) for job in jobs
               for sc in job.get("static_configs", []) for t in sc["targets"]]
    assert sorted(targets) == sorted((f"{name}:{router_yaml.admin.listen.port}", "/metrics")
                                     for name, _ in router_services)
    mounted = [v for svc in compose["services"].values() for v in svc.get("volumes", [])
               if str(v).startswith("./prometheus.yml:")]
    assert mounted, "no compose service mounts deploy/prometheus.yml"


def test_prometheus_config_passes_promtool() -> None:
    import shutil
    promtool = shutil.which("promtool")
    assert promtool, "promtool is installed by `make deps` (Debian package prometheus)"
    check = subprocess.run([promtool, "check", "config", str(DEPLOY / "prometheus.yml")],
                           capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, check.stdout + check.stderr


# -- Kubernetes ------------------------------------------------------------------------------

def test_kubernetes_container_ports_are_the_listeners(router_container: Doc,
                                                      configmap_yaml: Config) -> None:
    ports = {p["containerPort"] for p in router_container["ports"]}
    assert ports == {configmap_yaml.listen.port, configmap_yaml.admin.listen.port}


def test_kubernetes_services_select_the_pods_and_target_the_listeners(kube_docs: list[Doc],
                                                                      deployment: Doc,
                                                                      router_container: Doc,
                                                                      configmap_yaml: Config) -> None:
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    redis_labels = {"app.kubernetes.io/name": "model-router-redis"}
    services = [svc for svc in kind(kube_docs, "Service") if svc["spec"]["selector"] != redis_labels]
    assert services
    targets = set()
    for svc in services:
        assert svc["spec"]["selector"].items() <= labels.items(), f"Service {svc['metadata']['name']} selects no pod"
        targets |= {port_number(router_container, p.get("targetPort", p["port"])) for p in svc["spec"]["ports"]}
    assert targets == {configmap_yaml.listen.port, configmap_yaml.admin.listen.port}


def test_kubernetes_probes_hit_healthz_on_the_admin_port(router_container: Doc, pod: Doc,
                                                         configmap_yaml: Config) -> None:
    for probe in ("readinessProbe", "livenessProbe"):
        get = router_container[probe]["httpGet"]
        assert get["path"] == "/-/healthz", probe
        assert port_number(router_container, get["port"]) == configmap_yaml.admin.listen.port, probe
    # /-/healthz answers 503 while draining; liveness must not restart a router that is draining.
    live = router_container["livenessProbe"]
    assert live.get("periodSeconds", 10) * live.get("failureThreshold", 3) > pod["terminationGracePeriodSeconds"]


def test_kubernetes_termination_outlasts_pre_stop_and_drain(deployment: Doc, pod: Doc,
                                                            router_container: Doc,
                                                            configmap_yaml: Config) -> None:
    assert deployment["spec"]["strategy"]["type"] == "RollingUpdate"
    pre_stop = router_container["lifecycle"]["preStop"]
    argv = pre_stop.get("exec", {}).get("command", [])
    seconds = int(argv[1]) if argv[:1] == ["sleep"] else int(pre_stop.get("sleep", {}).get("seconds", 0))
    assert seconds > 0, "preStop should wait for the endpoint removal to spread"
    assert pod["terminationGracePeriodSeconds"] > seconds + configmap_yaml.limits.drain_timeout


def test_kubernetes_replicas_form_one_cluster_with_a_budget(kube_docs: list[Doc], deployment: Doc,
                                                           redis_deployment: Doc, router_container: Doc,
                                                           configmap_yaml: Config) -> None:
    replicas = deployment["spec"]["replicas"]
    assert replicas >= 3 and configmap_yaml.cluster is not None
    [pdb] = kind(kube_docs, "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    assert 0 < pdb["spec"]["minAvailable"] < replicas, "the budget must let one replica go at a time"
    assert configmap_yaml.cluster.redis_url_env
    url = urlsplit(env_value(router_container, configmap_yaml.cluster.redis_url_env))
    [svc] = [s for s in kind(kube_docs, "Service") if s["metadata"]["name"] == url.hostname]
    redis_labels = redis_deployment["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"]["selector"].items() <= redis_labels.items()
    [port] = [p for p in svc["spec"]["ports"] if p["port"] == url.port]
    [redis] = redis_deployment["spec"]["template"]["spec"]["containers"]
    assert port_number(redis, port["targetPort"]) == 6379


def test_kubernetes_runs_non_root_on_a_read_only_root(pod: Doc, router_container: Doc) -> None:
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"].get("runAsUser", 1) != 0
    for c in pod["containers"]:
        assert c["securityContext"]["readOnlyRootFilesystem"] is True, c["name"]
        assert c["securityContext"]["allowPrivilegeEscalation"] is False, c["name"]
        assert {"cpu", "memory"} <= c["resources"]["requests"].keys() and "memory" in c["resources"]["limits"]
    state = mount_at(router_container, STATE_DIR)
    assert not state.get("readOnly"), "the state dir must be writable"


def test_kubernetes_router_token_comes_from_a_secret(router_container: Doc,
                                                     configmap_yaml: Config) -> None:
    assert configmap_yaml.admin.token_env
    assert secret_env(router_container, configmap_yaml.admin.token_env)


def test_reload_sidecar_is_wired_to_the_router(sidecar: Doc, router_container: Doc,
                                               configmap_yaml: Config, docker: list[Instruction]) -> None:
    script = sidecar["command"][-1]
    assert sidecar["command"][:1] == ["python3"]
    assert (["deploy/kubernetes/config-reloader.py"], script) in copies(docker), f"the image has no {script}"
    token_env = configmap_yaml.admin.token_env
    assert token_env
    assert secret_env(sidecar, "ROUTER_ADMIN_TOKEN") == secret_env(router_container, token_env)
    admin = urlsplit(env_value(sidecar, "ROUTER_ADMIN_URL"))
    assert admin.hostname in LOOPBACK and admin.port == configmap_yaml.admin.listen.port
    assert env_value(sidecar, "ROUTER_CONFIG") == CONFIG_PATH
    config_dir = CONFIG_PATH.rsplit("/", 1)[0]
    mine, theirs = mount_at(sidecar, config_dir), mount_at(router_container, config_dir)
    assert mine["name"] == theirs["name"] and "subPath" not in mine


@pytest.fixture(scope="module")
def reloader() -> ModuleType:
    spec = importlib.util.spec_from_file_location("config_reloader", KUBE / "config-reloader.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_reload_sidecar_posts_reload_with_the_bearer_token_on_change(reloader: ModuleType, fake_admin: FakeAdmin,
                                                                     tmp_path: Path) -> None:
    config = tmp_path / "router.yaml"
    config.write_text("listen: 0.0.0.0:8080\n")
    seen = reloader.checksum(config)
    assert reloader.look(config, seen, fake_admin.url, "s3cret") == seen
    assert fake_admin.requests == [], "an unchanged file must not trigger a reload"

    config.write_text("listen: 0.0.0.0:8081\n")
    new = hashlib.sha256(config.read_bytes()).hexdigest()
    fake_admin.statuses += [409, 200]  # another admin change was running: ask again next time
    assert reloader.look(config, seen, fake_admin.url, "s3cret") == seen
    assert reloader.look(config, seen, fake_admin.url, "s3cret") == new
    assert fake_admin.requests == [("POST", "/-/reload", "Bearer s3cret")] * 2

    fake_admin.statuses.append(400)  # an invalid file is not asked about again
    config.write_text("listen: [\n")
    broken = reloader.look(config, new, fake_admin.url, "s3cret")
    assert broken != new and reloader.look(config, broken, fake_admin.url, "s3cret") == broken
    assert len(fake_admin.requests) == 3
