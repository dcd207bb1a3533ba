"""The status page at `/` on the admin listener: one HTML page, its stylesheet, script and icon.

The page is static; its script polls the admin API's JSON with same-origin fetches. Everything
is served from the package, so the page works in closed networks. The Content-Security-Policy
allows nothing but this origin (no inline script or style), so even a route name or request path
that slipped through unescaped could not run code.
"""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

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

routes = web.RouteTableDef()


def _file(name: str) -> web.Response:
    try:
        # A few KiB from the page cache, read afresh so an upgraded install needs no restart.
        body = (STATIC / name).read_bytes()
    except OSError as exc:
        # A broken install must not take the admin API down with it: report and carry on.
        return web.json_response({"error": {"status": 500, "message": f"status page file missing: {exc}"}},
                                 status=500)
    return web.Response(body=body, headers={**HEADERS, "Content-Type": FILES[name]})


@routes.get("/")
async def index(request: web.Request) -> web.Response:
    return _file("status.html")


@routes.get("/static/{name}")
async def asset(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    if name not in FILES:
        return web.json_response({"error": {"status": 404, "message": f"no static file {name!r}"}}, status=404)
    return _file(name)
