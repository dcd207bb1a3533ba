"""The status page at `/` on the admin listener: one HTML page, its stylesheet, script and icon.

The page at `/` carries the router's current figures as JSON in a `<script type="application/json">`
element, which the page's script draws as soon as it runs: the first view needs no fetch. Then it
polls the admin API's JSON with same-origin fetches. Everything is served from the package, so the
page works in closed networks. The Content-Security-Policy allows nothing but this origin (no inline
script or style; a JSON data block is not run), so even a route name or request path that slipped
through unescaped could not run code.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp import web

log = logging.getLogger("router.admin.statuspage")
STATIC = Path(__file__).resolve().parent / "static"
# The only files served: a fixed table, so no request path ever reaches the file system.
FILES = {
    "status.html": "text/html; charset=utf-8",
    "status.css": "text/css; charset=utf-8",
    "status.js": "text/javascript; charset=utf-8",
    "favicon.svg": "image/svg+xml",
}
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
       "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}

# What the first view shows (statusview.initial_state), set by the admin app.
StateProvider = Callable[[], dict[str, Any]]
INITIAL_STATE: web.AppKey[StateProvider] = web.AppKey("initial_state")
MARKER = b"<!--initial-state-->"

routes = web.RouteTableDef()


def _file(name: str, fill: Callable[[bytes], bytes] | None = None) -> web.Response:
    try:
        # A few KiB from the page cache, read afresh so an upgraded install needs no restart.
        body = (STATIC / name).read_bytes()
    except OSError as exc:
        # A broken install must not take the admin API down with it: report and carry on.
        return web.json_response({"error": {"status": 500, "message": f"status page file missing: {exc}"}},
                                 status=500)
    return web.Response(body=fill(body) if fill else body, headers={**HEADERS, "Content-Type": FILES[name]})


def data_block(state: dict[str, Any]) -> bytes:
    """The state as a JSON data block that no string inside it can end or turn into markup."""
    text = json.dumps(state, separators=(",", ":"))
    # `<` covers `</script>` and `<!--`; `>` and `&` for good measure. JSON.parse reads them back.
    text = text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    return b'<script type="application/json" id="initial-state">' + text.encode() + b"</script>"


@routes.get("/")
async def index(request: web.Request) -> web.Response:
    provider = request.app.get(INITIAL_STATE)
    if provider is None:
        return _file("status.html")
    try:
        block = data_block(provider())
    except Exception:  # the page must still load: without its data it fetches them, and shows the error
        log.exception("status page: building the first view failed")
        return _file("status.html")
    return _file("status.html", lambda page: page.replace(MARKER, block, 1))


@routes.get("/static/{name}")
async def asset(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    if name not in FILES:
        return web.json_response({"error": {"status": 404, "message": f"no static file {name!r}"}}, status=404)
    return _file(name)
