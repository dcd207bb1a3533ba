"""Reload model-router when its mounted ConfigMap changes: the sidecar in deployment.yaml.

The kubelet updates a ConfigMap volume some time after `kubectl apply` (its sync period plus the
cache TTL, about a minute by default) by swapping a symlink, which file-change notifications do
not reliably see. So this compares the file's SHA-256 every RELOAD_INTERVAL_SECONDS and, when it
changed, asks the router in the same pod to re-read it with `POST /-/reload` and the admin token.
The router validates the whole file; a broken one changes nothing and the router reports why.

Standard library only, so it runs in the router's image (the Dockerfile copies it to
/opt/model-router/config-reloader.py). Environment:

    ROUTER_ADMIN_TOKEN       required; the same Secret as the router's
    ROUTER_CONFIG            the mounted file (default /etc/model-router/router.yaml)
    ROUTER_ADMIN_URL         the router's admin listener (default http://127.0.0.1:9901)
    RELOAD_INTERVAL_SECONDS  how often to compare (default 10)
"""

from __future__ import annotations

import hashlib
import os
import signal
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import NoReturn

# Answers after which asking again about the same file cannot help: 200 applied; 400 the file is
# invalid (the old table keeps serving); 401/403 the token is wrong or missing. Anything else (409:
# another admin change is running, 5xx, no answer) is asked again on the next look.
SETTLED = frozenset({200, 400, 401, 403})


def checksum(path: Path) -> str | None:
    """SHA-256 of the file, or None while it cannot be read (not mounted yet, or mid-swap)."""
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def post_reload(admin_url: str, token: str, timeout: float = 30.0) -> tuple[int, str]:
    """POST /-/reload; returns (status, body), with status 0 when the router did not answer."""
    request = urllib.request.Request(f"{admin_url.rstrip('/')}/-/reload", data=b"", method="POST",
                                     headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read().decode(errors="replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")
    except OSError as exc:
        return 0, str(exc)


def look(path: Path, seen: str | None, admin_url: str, token: str) -> str | None:
    """One comparison; returns the checksum the router has settled, which is `seen` until it has."""
    current = checksum(path)
    if current is None or current == seen:
        return seen
    status, body = post_reload(admin_url, token)
    print(f"config-reloader: {path} changed; POST /-/reload: {status or 'no answer'} {body.strip()}", flush=True)
    return current if status in SETTLED else seen


def _stop(signum: int, frame: object) -> NoReturn:
    sys.exit(0)


def main() -> int:
    token = os.environ.get("ROUTER_ADMIN_TOKEN", "")
    if not token:
        print("config-reloader: ROUTER_ADMIN_TOKEN is not set; the router would refuse the reload", file=sys.stderr)
        return 2
    path = Path(os.environ.get("ROUTER_CONFIG", "/etc/model-router/router.yaml"))
    admin_url = os.environ.get("ROUTER_ADMIN_URL", "http://127.0.0.1:9901")
    interval = float(os.environ.get("RELOAD_INTERVAL_SECONDS", "10"))
    # As its container's PID 1 the process ignores SIGTERM unless it handles it, which would hold
    # the pod's shutdown for the whole grace period.
    signal.signal(signal.SIGTERM, _stop)
    seen = checksum(path)
    print(f"config-reloader: watching {path} every {interval:g}s for {admin_url}", flush=True)
    while True:
        time.sleep(interval)
        seen = look(path, seen, admin_url, token)


if __name__ == "__main__":
    sys.exit(main())
