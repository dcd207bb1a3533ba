"""`model-router validate` and the config loader: every error with FILE:LINE: path: message."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from router.config import ConfigError, parse_config
from tests.helpers import ROOT

GOOD = """\
listen: 127.0.0.1:8080
admin:
  listen: 127.0.0.1:9901
  token_env: ROUTER_ADMIN_TOKEN
state_dir: var/router
limits: {max_body: 10MiB, connect_timeout: 2s, request_timeout: 30s}
backends:
  fraud-v1: {url: "http://127.0.0.1:9001"}
  fraud-v2: {url: "http://127.0.0.1:9002"}
routes:
  - name: fraud
    match: {path_prefix: /v1/models/fraud}
    primary: fraud-v1
"""

BAD = """\
listen: 127.0.0.1:8080
limits: {max_body: 10XB, request_timeout: soon}
backends:
  fraud-v1: {url: "http://127.0.0.1:9001", colour: blue}
  fraud-v2: {url: "ftp://127.0.0.1:9002"}
routes:
  - name: fraud
    match: {path_prefix: /v1/models/fraud}
    primary: fraud-v3
    candidate: fraud-v2
    split: {candidate_percent: 120}
  - name: fraud
    match: {path_prefix: /v2}
    primary: fraud-v1
  - name: other
    match: {path_prefix: /x, methods: [FETCH]}
    primary: fraud-v1
    overrides:
      - match: {headers: {X-Model: v9}}
        backend: nope
"""


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "router", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)


def test_validate_good_file_prints_summary(tmp_path: Path) -> None:
    f = tmp_path / "router.yaml"
    f.write_text(GOOD)
    result = run_cli("validate", str(f))
    assert result.returncode == 0, result.stderr
    assert "1 routes, 2 backends" in result.stdout and "route fraud: /v1/models/fraud -> fraud-v1" in result.stdout


def test_validate_bad_file_lists_every_error(tmp_path: Path) -> None:
    f = tmp_path / "bad.yaml"
    f.write_text(BAD)
    result = run_cli("validate", str(f))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    expected = [
        f"{f}:2: limits.max_body: bad size '10XB'",
        f"{f}:2: limits.request_timeout: bad duration 'soon'",
        f"{f}:4: backends.fraud-v1.colour: unknown key",
        f"{f}:5: backends.fraud-v2.url: bad URL 'ftp://127.0.0.1:9002': the scheme must be http or https",
        f"{f}:9: routes[0].primary: unknown backend 'fraud-v3' (defined: fraud-v1, fraud-v2)",
        f"{f}:11: routes[0].split.candidate_percent: must be within 0..100, got 120",
        f"{f}:12: routes[1].name: duplicate route name 'fraud' (first at routes[0])",
        f"{f}:16: routes[2].match.methods: unknown method 'FETCH'",
        f"{f}:20: routes[2].overrides[0].backend: unknown backend 'nope'",
    ]
    for want in expected:
        assert any(line.startswith(want) for line in lines), (want, lines)
    # serve refuses to start with the same text
    served = run_cli("serve", "--config", str(f))
    assert served.returncode == 2 and served.stderr == result.stderr


def test_validate_missing_file_and_yaml_syntax(tmp_path: Path) -> None:
    result = run_cli("validate", str(tmp_path / "nope.yaml"))
    assert result.returncode == 2 and "nope.yaml:1: <top>: cannot read file" in result.stderr
    f = tmp_path / "syntax.yaml"
    f.write_text("listen: [1, 2\nroutes: {}\n")
    result = run_cli("validate", str(f))
    assert result.returncode == 2 and f"{f}:" in result.stderr and "YAML syntax" in result.stderr


@pytest.mark.parametrize(("snippet", "message"), [
    ("listen: 127.0.0.1:8080\nbackends: {}\nroutes: []\n", "define at least one backend"),
    ("listen: 8080\nbackends: {a: {url: 'http://h:1'}}\nroutes: [{name: r, match: {path: /}, primary: a}]\n",
     "bad address '8080'"),
    ("listen: 127.0.0.1:1\nbackends: {a: {url: 'http://h:1'}}\n"
     "routes: [{name: r, match: {path: /, path_prefix: /}, primary: a}]\n", "give exactly one of"),
    ("listen: 127.0.0.1:1\nbackends: {a: {url: 'http://h:1'}}\n"
     "routes: [{name: r, match: {path_regex: '('}, primary: a}]\n", "bad regular expression"),
    ("listen: 127.0.0.1:1\nbackends: {a: {url: 'http://h:1'}}\n"
     "routes: [{name: r, match: {path: /}, primary: a, candidate: a}]\n", "must differ from primary"),
    ("listen: 127.0.0.1:1\nbackends: {a: {url: 'http://h:1'}}\n"
     "routes: [{name: r, match: {path: /}, primary: a, split: {candidate_percent: 5}}]\n", "needs a candidate"),
    ("listen: 127.0.0.1:1\nbackends: {a: {url: 'http://h:1'}, b: {url: 'http://h:2'}}\n"
     "routes: [{name: r, match: {path: /}, primary: a, candidate: b, split: {sticky: 'ip:x'}}]\n",
     "bad sticky key 'ip:x'"),
    ("listen: 127.0.0.1:1\nlisten: 127.0.0.1:2\nbackends: {a: {url: 'http://h:1'}}\n"
     "routes: [{name: r, match: {path: /}, primary: a}]\n", "duplicate key"),
    ("listen: 127.0.0.1:1\nbackends: {a: {url: 'http://h:1'}}\n"
     "routes: [{name: r, match: {path: /}, primary: a, split: {candidate_percent: true}}]\n", "expected a number"),
    ("[]\n", "expected a mapping"),
])
def test_config_errors(snippet: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(snippet, "t.yaml")
    assert message in str(info.value)
    assert all(str(issue).startswith("t.yaml:") for issue in info.value.issues)


def test_units_and_defaults() -> None:
    cfg = parse_config(GOOD.replace("10MiB", "512KiB").replace("2s", "500ms"))
    assert cfg.limits.max_body == 512 * 1024 and cfg.limits.connect_timeout == 0.5
    assert cfg.limits.request_timeout == 30 and cfg.admin.listen.port == 9901
    assert cfg.backends["fraud-v1"].endpoints[0].port == 9001 and cfg.routes[0].split.salt == "fraud"


@pytest.mark.parametrize("path", sorted((ROOT / "config").glob("*.yaml")), ids=lambda p: p.name)
def test_example_configs_validate(path: Path) -> None:
    result = run_cli("validate", str(path))
    assert result.returncode == 0, result.stderr
