"""The `cluster` block: strict, every error as FILE:LINE: path: message."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from router.config import ConfigError, parse_config
from router.config.clusterconfig import ClusterConfig
from tests.helpers import ROOT, free_port

BASE = ("listen: 127.0.0.1:8080\nbackends: {a: {url: 'http://127.0.0.1:1'}}\n"
        "routes: [{name: r, match: {path_prefix: /}, primary: a}]\n")


@pytest.mark.parametrize(("block", "expected"), [
    ("cluster: {redis_url: 'redis://h:6379/0'}", "c.yaml:4: cluster.name: required key is missing"),
    ("cluster: {name: 'a b', redis_url: 'redis://h:6379/0'}", "c.yaml:4: cluster.name: must be letters"),
    ("cluster: {name: c}", "c.yaml:4: cluster: give exactly one of redis_url and redis_url_env"),
    ("cluster: {name: c, redis_url: 'redis://h/0', redis_url_env: X}", "c.yaml:4: cluster: give exactly one"),
    ("cluster: {name: c, redis_url: 'http://h:6379'}", "c.yaml:4: cluster.redis_url: must be a redis://"),
    ("cluster: {name: c, redis_url: 'redis://:secret@h:6379'}", "c.yaml:4: cluster.redis_url: a password must not"),
    ("cluster: {name: c, redis_url: 'redis://h:99999'}", "c.yaml:4: cluster.redis_url: bad port"),
    ("cluster: {name: c, redis_url_env: X, lease: 500ms}", "c.yaml:4: cluster.lease: must be at least 1s"),
    ("cluster: {name: c, redis_url_env: X, leader: me}", "c.yaml:4: cluster.leader: unknown key"),
    ("cluster: [c]", "c.yaml:4: cluster: expected a mapping"),
    ("workers: 0", "c.yaml:4: workers: must be within 1..64"),
    ("workers: two", "c.yaml:4: workers: expected an integer"),
])
def test_bad_cluster_blocks_are_located(block: str, expected: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(BASE + block + "\n", "c.yaml")
    assert str(err.value).startswith(expected), str(err.value)


def test_a_good_cluster_block(monkeypatch: pytest.MonkeyPatch) -> None:
    config = parse_config(BASE + "cluster:\n  name: fraud-prod\n  redis_url_env: ROUTER_REDIS_URL\n  lease: 6s\n",
                          "c.yaml")
    cluster = config.cluster
    assert cluster == ClusterConfig("fraud-prod", None, "ROUTER_REDIS_URL", 6.0) and config.workers == 1
    monkeypatch.delenv("ROUTER_REDIS_URL", raising=False)
    with pytest.raises(ValueError, match=r"\$ROUTER_REDIS_URL is not set"):
        cluster.url()
    monkeypatch.setenv("ROUTER_REDIS_URL", "redis://:pw@10.0.0.5:6379/0")  # a password is fine from the env
    assert cluster.url() == "redis://:pw@10.0.0.5:6379/0"
    monkeypatch.setenv("ROUTER_REDIS_URL", "10.0.0.5:6379")
    with pytest.raises(ValueError, match="must be a redis://"):
        cluster.url()
    assert parse_config(BASE, "c.yaml").cluster is None  # without the block: one router alone, as before


def test_serve_refuses_to_start_without_the_redis_url_variable(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(BASE.replace("8080", str(free_port())) + f"admin: {{listen: 127.0.0.1:{free_port()}}}\n"
                    f"state_dir: {tmp_path / 'state'}\ncluster: {{name: c, redis_url_env: H13_UNSET_REDIS_URL}}\n")
    env = {k: v for k, v in os.environ.items() if k != "H13_UNSET_REDIS_URL"}
    run = subprocess.run([sys.executable, "-m", "router", "serve", "--config", str(path)], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 1
    assert f"{path}: cluster.redis_url_env: $H13_UNSET_REDIS_URL is not set" in run.stderr, run.stderr


def test_a_reload_says_cluster_and_workers_changes_need_a_restart() -> None:
    from router.app import restart_notes

    old = parse_config(BASE, "c.yaml")
    new = parse_config(BASE + "workers: 2\ncluster: {name: c, redis_url: 'redis://127.0.0.1:6379/0'}\n", "c.yaml")
    notes = restart_notes(old, new)
    assert any(n.startswith("cluster changed (None -> ClusterConfig(name='c'") for n in notes), notes
    assert "workers changed (1 -> 2): takes effect at the next restart" in notes
