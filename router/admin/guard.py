"""Who may call the admin API, and the one shape of every admin error.

- Host: only values that name this listener (an IP literal, `localhost`, the `admin.listen` host)
  or one of `admin.allowed_hosts`. A DNS-rebinding page reaches us under the attacker's name, and
  with Host and Origin both that name the Origin check alone lets it read; IP literals cannot be
  rebound. The port is not compared, so `kubectl port-forward` and NAT keep working.
- Origin and Sec-Fetch-Site: no cross-site browser call.
- Token: every change (POST) needs `Authorization: Bearer <token>`; with `admin.read_token` every
  read too, except `/-/healthz` (kubelet and Docker health probes carry no token).
- Errors: whatever a handler raises becomes `{"error": {"status", "message"}}`. Handlers answer bad
  input with a 4xx themselves; anything else is a bug: a 500 whose traceback goes to the log only.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import os
from collections.abc import Awaitable, Callable

from aiohttp import web

from router.config import AdminConfig

log = logging.getLogger("router.admin.api")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
OPEN_PATHS = frozenset({"/-/healthz"})  # answered without Host allow-list or read token


def json_error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": {"status": status, "message": message}}, status=status, headers=headers)


def host_name(value: str) -> str:
    """The name part of a Host header value: no port, no brackets, lower case, no final dot."""
    if value.startswith("["):
        return value[1:].partition("]")[0].lower()
    name, colon, port = value.rpartition(":")
    if not colon or not port.isdigit():
        name = value
    return name.lower().rstrip(".")


def host_allowed(value: str | None, admin: AdminConfig) -> bool:
    """Whether a Host header names this listener. No Host at all (HTTP/1.0) is not a browser."""
    if value is None or "*" in admin.allowed_hosts:
        return True
    name = host_name(value)
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        pass
    return name in ("localhost", admin.listen.host.lower()) or name in admin.allowed_hosts


def token_problem(authorization: str, token_env: str | None) -> web.Response | None:
    """None when `authorization` carries the configured token; else the 401 or 403 to answer."""
    expected = os.environ.get(token_env) if token_env else None
    if not expected:
        return json_error(403, f"no admin token configured: set ${token_env} for the router to allow this"
                          if token_env else "no admin token configured (admin.token_env is empty)")
    scheme, _, token = authorization.partition(" ")
    # aiohttp hands undecodable header bytes over as surrogates: compare bytes, never raise.
    given = token.strip().encode("utf-8", "surrogateescape")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given, expected.encode("utf-8", "surrogateescape")):
        return json_error(401, "missing or wrong bearer token")
    return None


def warn_if_open(admin: AdminConfig) -> None:
    """Said once at start: an admin API without a token is read by anyone who can reach it."""
    if not (admin.token_env and os.environ.get(admin.token_env)):
        where = f"${admin.token_env} is empty" if admin.token_env else "admin.token_env is empty"
        log.warning("no admin token set (%s): the admin API refuses every change (promote, rollback, split, "
                    "reload), and status, diffs (live model outputs) and metrics are readable by anyone who can "
                    "reach %s", where, admin.listen)


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Outermost: every error leaves as the documented JSON shape."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400 or exc.content_type == "application/json":
            raise
        keep = {k: v for k, v in exc.headers.items() if k.lower() not in ("content-type", "content-length")}
        return json_error(exc.status, f"{exc.reason}: {request.method} {request.path}", keep)
    except Exception:  # a bug: the handlers turn every bad input into a 4xx themselves
        log.exception("admin %s %s failed", request.method, request.path)
        return json_error(500, "internal error; the router's log has the details")


def access_problem(request: web.Request, admin: AdminConfig) -> web.Response | None:
    """The 401/403 to answer, or None: Host, Origin and Sec-Fetch-Site for every call, the token for
    changes (and reads too with `admin.read_token`)."""
    host = request.headers.get("Host")
    if request.path not in OPEN_PATHS and not host_allowed(host, admin):
        return json_error(403, f"Host {host!r} does not name this admin listener; add it to admin.allowed_hosts")
    origin = request.headers.get("Origin")
    if origin is not None and origin.split("://", 1)[-1] != host:
        return json_error(403, f"cross-origin request from {origin} refused")
    if request.headers.get("Sec-Fetch-Site") == "cross-site":
        return json_error(403, "cross-site request refused")
    reading = request.method in ("GET", "HEAD")
    if not reading or (admin.read_token and request.path not in OPEN_PATHS):
        return token_problem(request.headers.get("Authorization", ""), admin.token_env)
    return None
