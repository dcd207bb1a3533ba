"""The admin listener (aiohttp): health, status, routes, split control, reload and metrics.

Reads are GET; every change is POST and needs `Authorization: Bearer <token>`, compared in
constant time. With no token configured, changes are refused. Browser requests from another
origin are refused, so a web page cannot drive the admin API with the operator's network access.
Operator actions run one at a time; a second one arriving meanwhile gets 409.
"""

from __future__ import annotations

import hmac
import json
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from router import statuspage
from router.app import Router
from router.cluster.node import ClusterBusy
from router.decision import InvalidTransition, OperatorAction
from router.feedback import FeedbackError, parse_feedback_body
from router.metrics import make_registry
from router.policy import assign
from router.runtime import describe

ROUTER = web.AppKey("router", Router)
REGISTRY = web.AppKey("registry", CollectorRegistry)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def json_error(status: int, message: str) -> web.Response:
    return web.json_response({"error": {"status": status, "message": message}}, status=status)


@web.middleware
async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Origin check for every call; token and serialisation for changes."""
    origin = request.headers.get("Origin")
    if origin is not None and origin.split("://", 1)[-1] != request.host:
        return json_error(403, f"cross-origin request from {origin} refused")
    if request.headers.get("Sec-Fetch-Site") == "cross-site":
        return json_error(403, "cross-site request refused")
    if request.method == "GET" or request.method == "HEAD":
        return await handler(request)
    router = request.app[ROUTER]
    problem = check_token(request, router)
    if problem is not None:
        return problem
    if router.operator_lock.locked():
        return json_error(409, "another operator action is in progress; try again")
    async with router.operator_lock:
        return await handler(request)


def check_token(request: web.Request, router: Router) -> web.Response | None:
    env = router.config.admin.token_env
    expected = os.environ.get(env) if env else None
    if not expected:
        return json_error(403, f"no admin token configured: set ${env} for the router to allow changes"
                          if env else "no admin token configured (admin.token_env is empty)")
    given = request.headers.get("Authorization", "")
    scheme, _, token = given.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), expected.encode()):
        return json_error(401, "missing or wrong bearer token")
    return None


async def healthz(request: web.Request) -> web.Response:
    router = request.app[ROUTER]
    if router.data.draining:
        return web.json_response({"status": "draining"}, status=503)
    return web.json_response({"status": "ok"})


async def status(request: web.Request) -> web.Response:
    router = request.app[ROUTER]
    rt = router.runtime
    return web.json_response({
        "config": router.config_path,
        "routes": describe(rt, router.rollouts),
        "backends": {name: [{"url": p.endpoint.url, "idle": len(p.idle), "busy": p.busy,
                             "available": st.available(time.monotonic()), "healthy": st.healthy,
                             "consecutive_failures": st.consecutive_failures}
                            for p, st in zip(g.pools, g.states, strict=True)]
                     for name, g in rt.groups.items()},
        "reload": {"last_ok": router.last_reload_ok, "last_error": router.last_reload_error,
                   "ok": router.reloads_ok, "failed": router.reloads_failed},
        "state_problem": router.state_store.problem,
        "rollout_problem": router.rollouts.problem,
        "monitoring_problem": router.monitor.problem,
        "cluster": None if router.cluster is None else {
            "name": router.cluster.store.cfg.name, "leader": router.cluster.leader,
            "applied_version": router.cluster.state.version, "store_up": router.cluster.store.up,
            "problem": router.cluster.problem},
    })


def find_route(request: web.Request) -> Any:
    rt = request.app[ROUTER].runtime
    name = request.match_info["name"]
    route = rt.table.by_name.get(name)
    if route is None:
        raise web.HTTPNotFound(text=json.dumps({"error": {"status": 404, "message": f"unknown route {name!r}"}}),
                               content_type="application/json")
    return route


async def route_info(request: web.Request) -> web.Response:
    route = find_route(request)
    router = request.app[ROUTER]
    return web.json_response(next(r for r in describe(router.runtime, router.rollouts) if r["name"] == route.name))


async def route_assign(request: web.Request) -> web.Response:
    route = find_route(request)
    key = request.query.get("key")
    if not key:
        return json_error(400, "give the sticky key as ?key=...")
    rc = route.config
    percent = request.app[ROUTER].ledger.percent(rc)
    return web.json_response({"route": rc.name, "key": key, "backend": assign(rc, percent, key),
                              "candidate_percent": percent,
                              "sticky": str(rc.split.sticky) if rc.split.sticky else None})


async def route_split(request: web.Request) -> web.Response:
    route = find_route(request)
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return json_error(400, 'body must be JSON, e.g. {"candidate_percent": 25}')
    value = body.get("candidate_percent") if isinstance(body, dict) else None
    if isinstance(value, bool) or not isinstance(value, int | float):
        return json_error(400, 'give {"candidate_percent": NUMBER} with 0 <= NUMBER <= 100')
    if not 0 <= value <= 100:
        return json_error(400, f"candidate_percent must be within 0..100, got {value}")
    if route.config.candidate is None and value > 0:
        return json_error(409, f"route {route.name!r} has no candidate backend")
    if route.config.rollout is not None:
        return json_error(409, f"route {route.name!r} is under automatic rollout; use promote, rollback, pause "
                          "or resume instead of setting the split")
    router = request.app[ROUTER]
    if router.cluster is not None:  # every member of the cluster serves it within a second
        try:
            await router.cluster.set_split(route.config, float(value))
        except ClusterBusy as exc:
            return json_error(exc.status, exc.message)
        return web.json_response({"route": route.name, "candidate_percent": float(value), "persisted": True,
                                  "cluster_version": router.cluster.state.version})
    try:
        router.ledger.set_split(route.config, float(value))
    except OSError as exc:
        return json_error(500, f"could not persist the split in {router.state_store.path}: {exc}")
    return web.json_response({"route": route.name, "candidate_percent": float(value), "persisted": True})


def shadow_stats(request: web.Request) -> tuple[Any, Any]:
    route = find_route(request)
    stats = request.app[ROUTER].ledger.shadow_stats(route.name)
    if route.config.shadow is None or stats is None:
        raise web.HTTPNotFound(text=json.dumps({"error": {"status": 404, "message":
                                                          f"route {route.name!r} has no shadow"}}),
                               content_type="application/json")
    return route, stats


async def route_shadow(request: web.Request) -> web.Response:
    route, stats = shadow_stats(request)
    cfg = route.config.shadow
    mirror = request.app[ROUTER].mirror
    body = {"route": route.name, "primary": route.config.primary, "shadow_backend": cfg.backend,
            "percent": cfg.percent, "format": cfg.compare.format, "in_flight": mirror.in_flight(route.name),
            **stats.report()}
    return web.json_response(body)


async def route_diffs(request: web.Request) -> web.Response:
    route, stats = shadow_stats(request)
    try:
        limit = int(request.query.get("limit", "50"))
    except ValueError:
        return json_error(400, "limit must be a whole number")
    diffs = list(stats.recent)[-limit:] if limit > 0 else []
    return web.json_response({"route": route.name, "diffs": diffs[::-1]})


async def route_rollout(request: web.Request) -> web.Response:
    route = find_route(request)
    rollouts = request.app[ROUTER].rollouts
    info = rollouts.describe(route.name)
    if info is None:
        return json_error(404, f"route {route.name!r} has no rollout")
    try:
        tail = int(request.query.get("tail", "20"))
    except ValueError:
        return json_error(400, "tail must be a whole number")
    cluster = request.app[ROUTER].cluster
    log = await cluster.tail(route.name, max(0, tail)) if cluster else rollouts.tail(route.name, max(0, tail))
    return web.json_response({**info, "log": log})


def rollout_action(action: OperatorAction) -> Handler:
    async def handler(request: web.Request) -> web.Response:
        route = find_route(request)
        rollouts = request.app[ROUTER].rollouts
        if rollouts.describe(route.name) is None:
            return json_error(404, f"route {route.name!r} has no rollout")
        cluster = request.app[ROUTER].cluster
        try:
            decision = await cluster.operator(route.name, action) if cluster else rollouts.operator(route.name, action)
        except InvalidTransition as exc:
            return json_error(409, str(exc))
        except ClusterBusy as exc:
            return json_error(exc.status, exc.message)
        return web.json_response({"route": route.name, "action": str(decision.action),
                                  "phase": str(decision.phase), "step_index": decision.step_index,
                                  "reason": decision.reason})
    return handler


async def feedback(request: web.Request) -> web.Response:
    monitor = request.app[ROUTER].monitor
    if monitor.store is None:
        return json_error(404, "the feedback loop is off: add monitoring.feedback to the routing YAML")
    try:
        items = parse_feedback_body(await request.read())
    except FeedbackError as exc:
        monitor.feedback_counts["malformed"] += 1
        return json_error(exc.status, exc.message)
    result = await monitor.feedback(items)
    return web.json_response(result.to_json(), status=result.status)


async def route_quality(request: web.Request) -> web.Response:
    route = find_route(request)
    monitor = request.app[ROUTER].monitor
    if monitor.store is None:
        return json_error(404, "the feedback loop is off: add monitoring.feedback to the routing YAML")
    rc = route.config
    quality = await monitor.store.run(monitor.store.quality, route.name, rc.primary, rc.candidate)
    return web.json_response({"route": route.name, **quality})


async def alerts(request: web.Request) -> web.Response:
    detector = request.app[ROUTER].monitor.detector
    if detector is None:
        return web.json_response({"enabled": False, "alerts": [], "active": []})
    try:
        limit = int(request.query.get("limit", "50"))
    except ValueError:
        return json_error(400, "limit must be a whole number")
    return web.json_response({"enabled": True, "alerts": [a.to_json() for a in detector.recent(max(0, limit))],
                              "active": [a.to_json() for a in detector.active()]})


async def reload(request: web.Request) -> web.Response:
    ok, message = await request.app[ROUTER].reload()
    return web.json_response({"ok": ok, "message": message}, status=200 if ok else 400)


async def cluster_info(request: web.Request) -> web.Response:
    cluster = request.app[ROUTER].cluster
    if cluster is None:
        return json_error(404, "this router is not in a cluster: add `cluster:` to the routing YAML")
    return web.json_response(await cluster.info())


async def metrics(request: web.Request) -> web.Response:
    body = generate_latest(request.app[REGISTRY])
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})




def build_admin_app(router: Router) -> web.Application:
    app = web.Application(middlewares=[guard], client_max_size=1024 * 1024)
    app[ROUTER] = router
    app[REGISTRY] = make_registry(lambda: router)
    app.router.add_get("/-/healthz", healthz)
    app.router.add_get("/-/status", status)
    app.router.add_get("/-/routes/{name}", route_info)
    app.router.add_get("/-/routes/{name}/assign", route_assign)
    app.router.add_post("/-/routes/{name}/split", route_split)
    app.router.add_get("/-/routes/{name}/shadow", route_shadow)
    app.router.add_get("/-/routes/{name}/diffs", route_diffs)
    app.router.add_get("/-/routes/{name}/rollout", route_rollout)
    for action in (OperatorAction.PROMOTE, OperatorAction.ROLLBACK, OperatorAction.PAUSE, OperatorAction.RESUME,
                   OperatorAction.RESTART):
        app.router.add_post(f"/-/routes/{{name}}/{action}", rollout_action(action))
    app.router.add_post("/-/reload", reload)
    app.router.add_post("/-/feedback", feedback)
    app.router.add_get("/-/routes/{name}/quality", route_quality)
    app.router.add_get("/-/alerts", alerts)
    app.router.add_get("/-/cluster", cluster_info)
    app.router.add_get("/metrics", metrics)
    app.router.add_routes(statuspage.routes)
    return app
