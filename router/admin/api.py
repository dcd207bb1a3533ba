"""The admin listener (aiohttp): health, status, routes, split control, reload and metrics.

Reads are GET; every change is POST and needs `Authorization: Bearer <token>`, compared in
constant time (reads too with `admin.read_token`). With no token configured, changes are refused.
Browser requests from another origin, or under a Host name that is not this listener's, are
refused, so a web page cannot drive or read the admin API with the operator's network access
(router.adminguard). Operator actions run one at a time; a second one arriving meanwhile gets 409.
Every error is `{"error": {"status", "message"}}`.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from router.admin import statuspage, statusview
from router.admin.guard import access_problem, json_error, json_errors, warn_if_open
from router.analysis.decision import InvalidTransition, OperatorAction
from router.cluster.node import ClusterBusy
from router.control.llmstats import llm_report
from router.dataplane.policy import assign
from router.observe.feedback import FeedbackError, parse_feedback_body
from router.observe.metrics import make_registry
from router.runtime import describe

if TYPE_CHECKING:
    from router.app import Router

ROUTER: web.AppKey[Router] = web.AppKey("router")  # the app module builds this one
REGISTRY = web.AppKey("registry", CollectorRegistry)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
MAX_TAIL = 1000  # decision-log entries per /rollout answer


@web.middleware
async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Access checks for every call (router.adminguard); changes run one at a time."""
    router = request.app[ROUTER]
    problem = access_problem(request, router.config.admin)
    if problem is not None:
        return problem
    if request.method == "GET" or request.method == "HEAD":
        return await handler(request)
    if router.operator_lock.locked():
        return json_error(409, "another operator action is in progress; try again")
    async with router.operator_lock:
        return await handler(request)


async def healthz(request: web.Request) -> web.Response:
    router = request.app[ROUTER]
    if router.data.server is None:
        # The admin listener starts first: until the data port listens, a probe that took 200 for
        # ready would send traffic to a closed port.
        return web.json_response({"status": "starting"}, status=503)
    if router.data.draining:
        return web.json_response({"status": "draining"}, status=503)
    return web.json_response({"status": "ok"})


async def status(request: web.Request) -> web.Response:
    return web.json_response(statusview.status(request.app[ROUTER]))


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
    except (ValueError, RecursionError):  # ValueError: bad JSON, bad UTF-8, an int over 4,300 digits
        return json_error(400, 'body must be JSON, e.g. {"candidate_percent": 25}')
    value = body.get("candidate_percent") if isinstance(body, dict) else None
    if isinstance(value, bool) or not isinstance(value, int | float):
        return json_error(400, 'give {"candidate_percent": NUMBER} with 0 <= NUMBER <= 100')
    if not 0 <= value <= 100:
        return json_error(400, f"candidate_percent must be within 0..100, got {value}")
    if route.config.candidate is None and value > 0:
        return json_error(409, f"route {route.name!r} has no candidate backend")
    if route.config.rollout is not None:
        return json_error(409, split_refusal(route.name, request.app[ROUTER].rollouts.describe(route.name)))
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


def split_refusal(name: str, rollout: dict[str, Any] | None) -> str:
    """Why a route under rollout takes no split, and the one command that does what was meant."""
    phase = (rollout or {}).get("phase")
    if phase == "rolled_back":
        return (f"route {name!r} is under automatic rollout and was rolled back: all traffic is on the primary; "
                f"to try the candidate again, run `model-router restart {name}`")
    if phase == "promoted":
        return (f"route {name!r} is under automatic rollout and its candidate is promoted; to send all traffic "
                f"back to the primary run `model-router rollback {name}`, to make the candidate the primary run "
                f"`model-router finalize {name}`")
    if phase == "completed":
        return (f"route {name!r} finished its rollout; its split is the YAML's rollout block: remove `rollout:` "
                "from the route to set the split by hand")
    return (f"route {name!r} is under automatic rollout ({phase}); the rollout sets its split: use "
            f"`model-router promote|pause|rollback {name}` instead")


async def route_shadow(request: web.Request) -> web.Response:
    route, stats = shadow_stats(request)
    cfg = route.config.shadow
    router = request.app[ROUTER]
    stopped = router.ledger.mirror_stopped.get(route.name)
    previous = router.ledger.previous_shadow_stats(route.name)
    body = {"route": route.name, "primary": route.config.primary, "shadow_backend": cfg.backend,
            "percent": cfg.percent, "format": cfg.compare.format, "in_flight": router.mirror.in_flight(route.name),
            "mirroring": stopped is None, "mirroring_stopped": stopped,
            **stats.report(),
            # the report a change of compare rules (or backends) replaced, kept for an hour
            "previous": {"ended": previous[0], "primary": previous[1].key[0], "shadow_backend": previous[1].key[1],
                         **previous[1].report()} if previous is not None else None}
    llm = llm_report(request.app[ROUTER].ledger.llm, route.name)
    if llm is not None:
        body["llm"] = llm  # LLM routes: paired TTFT/TPOT/tokens and the judge's verdicts
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
    # The log is on disk and may be large: read its end in a worker thread, never on the loop.
    cluster = request.app[ROUTER].cluster
    n = min(max(0, tail), MAX_TAIL)
    log = await cluster.tail(route.name, n) if cluster else await asyncio.to_thread(rollouts.tail, route.name, n)
    return web.json_response({**info, "log": log})


MAX_NOTE = 500  # characters of an operator's reason or name kept in the decision log


async def operator_note(request: web.Request) -> tuple[str | None, str | None] | web.Response:
    """The optional `{"reason": ..., "actor": ...}` body of an operator action (an empty body is fine)."""
    raw = await request.read()
    if not raw.strip():
        return None, None
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        body = None
    if not isinstance(body, dict) or set(body) - {"reason", "actor"}:
        return json_error(400, 'the body is optional; when given it must be JSON {"reason": TEXT, "actor": NAME}')
    values = [body.get("actor"), body.get("reason")]
    if any(v is not None and (not isinstance(v, str) or len(v) > MAX_NOTE) for v in values):
        return json_error(400, f"reason and actor must be strings of at most {MAX_NOTE} characters")
    return values[0] or None, values[1] or None


def rollout_action(action: OperatorAction) -> Handler:
    async def handler(request: web.Request) -> web.Response:
        route = find_route(request)
        rollouts = request.app[ROUTER].rollouts
        if rollouts.describe(route.name) is None:
            return json_error(404, f"route {route.name!r} has no rollout")
        note = await operator_note(request)
        if isinstance(note, web.Response):
            return note
        try:
            cluster = request.app[ROUTER].cluster
            decision = await cluster.operator(route.name, action, *note) if cluster else \
                rollouts.operator(route.name, action, *note)
        except InvalidTransition as exc:
            hint = " or ".join(f"`model-router {cmd} {route.name}`" for cmd in exc.suggest)
            return json_error(409, f"{exc}" + (f"; try {hint}" if hint else ""))
        except ClusterBusy as exc:
            return json_error(exc.status, exc.message)
        info = rollouts.describe(route.name) or {}
        return web.json_response({"route": route.name, "action": str(decision.action),
                                  "phase": str(decision.phase), "step_index": decision.step_index,
                                  "step_label": info.get("step_label"), "reason": decision.reason})
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
    if ok:
        return web.json_response({"ok": True, "message": message})
    # The documented error shape, with the old top-level fields kept for existing clients.
    return web.json_response({"ok": False, "message": message, "error": {"status": 400, "message": message}},
                             status=400)


async def cluster_info(request: web.Request) -> web.Response:
    cluster = request.app[ROUTER].cluster
    if cluster is None:
        return json_error(404, "this router is not in a cluster: add `cluster:` to the routing YAML")
    return web.json_response(await cluster.info())


async def metrics(request: web.Request) -> web.Response:
    body = generate_latest(request.app[REGISTRY])
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def build_admin_app(router: Router) -> web.Application:
    warn_if_open(router.config.admin)
    app = web.Application(middlewares=[json_errors, guard], client_max_size=1024 * 1024)
    app[ROUTER] = router
    app[REGISTRY] = make_registry(lambda: router)
    app[statuspage.INITIAL_STATE] = lambda: statusview.initial_state(router)  # embedded in the page at /
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
