"""The router refuses to run on aiohttp's pure-Python parser."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.helpers import ROOT, base_config, free_port


def test_refuses_pure_python_parser(tmp_path: Path) -> None:
    import yaml

    cfg = base_config(tmp_path, {"m": f"http://127.0.0.1:{free_port()}"},
                      [{"name": "m", "match": {"path_prefix": "/"}, "primary": "m"}])
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "AIOHTTP_NO_EXTENSIONS": "1"}
    result = subprocess.run([sys.executable, "-m", "router", "serve", "--config", str(path)], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "C HTTP parser is not in use" in result.stderr and "AIOHTTP_NO_EXTENSIONS" in result.stderr
