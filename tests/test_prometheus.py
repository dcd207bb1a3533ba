"""A real Prometheus server scrapes the router and a value is queried back."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
from pathlib import Path

import aiohttp

from tests.helpers import BackendFactory, RouterFactory, base_config, free_port


async def test_prometheus_scrapes_the_router(make_router: RouterFactory, make_backend: BackendFactory,
                                             tmp_path: Path) -> None:
    binary = shutil.which("prometheus")
    assert binary, "the prometheus server is installed by `make deps` (Debian package prometheus)"
    b = await make_backend("v1")
    r = await make_router(base_config(tmp_path, {"v1": b.url},
                                      [{"name": "m", "match": {"path_prefix": "/"}, "primary": "v1"}]))
    async with aiohttp.ClientSession() as s:
        for _ in range(25):
            async with s.get(r.url + "/x") as resp:
                assert resp.status == 200
    port = free_port()
    (tmp_path / "prometheus.yml").write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "scrape_configs:\n"
        f"  - job_name: router\n    static_configs: [{{targets: ['{r.config['admin']['listen']}']}}]\n")
    proc = subprocess.Popen([binary, f"--config.file={tmp_path / 'prometheus.yml'}",
                             f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{port}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    query = 'sum(router_requests_total{route="m",backend="v1",code="2xx"})'
    value = None
    try:
        async with aiohttp.ClientSession() as s:
            for _ in range(150):
                assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else "prometheus exited"
                with contextlib.suppress(aiohttp.ClientError):
                    async with s.get(f"http://127.0.0.1:{port}/api/v1/query", params={"query": query}) as resp:
                        data = await resp.json()
                        result = data["data"]["result"]
                        if result:
                            value = float(result[0]["value"][1])
                            break
                await asyncio.sleep(0.2)
            async with s.get(f"http://127.0.0.1:{port}/api/v1/targets") as resp:
                targets = (await resp.json())["data"]["activeTargets"]
    finally:
        proc.terminate()
        proc.wait(10)
        if proc.stderr:
            proc.stderr.close()
    assert value == 25.0
    assert targets[0]["health"] == "up"
