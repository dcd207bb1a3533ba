"""nginx as the reference proxy: one worker (or `workers`), upstream keepalive, optionally a mirror.

Only the config text lives here; bench/run.py starts and stops the process.
"""

from __future__ import annotations

import os
from pathlib import Path

HOST = "127.0.0.1"

# nginx closes a keep-alive connection after 1,000 requests by default, on both the
# client and the upstream side. The router has no such limit, so lift it here: the
# comparison should be about proxying, not reconnecting.
_KEEPALIVE_REQUESTS = 1_000_000


def config(prefix: Path, listen: int, upstream: int, mirror: int | None = None, workers: int = 1) -> str:
    """nginx.conf for a plain reverse proxy on `listen` to `upstream`.

    With `mirror`, every request is also copied to that port with nginx's `mirror`
    directive, the closest nginx has to the router's shadow traffic.
    """
    temp = "\n".join(f"    {kind}_temp_path {prefix / kind};"
                     for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    return f"""\
daemon off;
master_process on;
worker_processes {workers};
{"user root;" if os.geteuid() == 0 else ""}
pid {prefix / "nginx.pid"};
error_log {prefix / "error.log"} warn;

events {{
    worker_connections 4096;
}}

http {{
    access_log off;
    keepalive_requests {_KEEPALIVE_REQUESTS};
{temp}

{_upstream("live", upstream)}
{_upstream("mirror", mirror) if mirror else ""}
    server {{
        listen {HOST}:{listen};
        location / {{
{_MIRROR_HOOK if mirror else ""}
            proxy_pass http://live;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
{_MIRROR_LOCATION if mirror else ""}
    }}
}}
"""


def _upstream(name: str, port: int) -> str:
    return f"""\
    upstream {name} {{
        server {HOST}:{port};
        keepalive 64;
        keepalive_requests {_KEEPALIVE_REQUESTS};
    }}"""


_MIRROR_HOOK = """\
            mirror /_mirror;
            mirror_request_body on;"""

_MIRROR_LOCATION = """\
        location = /_mirror {
            internal;
            proxy_pass http://mirror$request_uri;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }"""
