"""What the status page and `GET /-/status` show: built from snapshots and read-only views only.

`status` is the admin API's `/-/status` body; `initial_state` adds everything the page's first view
needs (each route's shadow report, recent disagreements and decision log, and the alerts), so the
HTML served at `/` carries its data and draws it on load, without waiting for a fetch.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from router.admin.gateprogress import progress
from router.analysis.decision import TERMINAL, Phase, StepEvidence
from router.runtime import Runtime, describe

if TYPE_CHECKING:
    from router.app import Router

DIFFS_SHOWN = 5
LOG_SHOWN = 10
ALERTS_SHOWN = 50


def status(router: Router) -> dict[str, Any]:
    rt = router.runtime
    now = time.time()
    routes = describe(rt, router.rollouts)
    for route in routes:
        _add_views(router, rt, route, now)
    return {
        "config": router.config_path,
        "time": now,
        "routes": routes,
        "backends": backends(rt),
        "reload": {"last_ok": router.last_reload_ok, "last_error": router.last_reload_error,
                   "ok": router.reloads_ok, "failed": router.reloads_failed},
        "state_problem": router.state_store.save_problem or router.state_store.problem,
        "rollout_problem": router.rollouts.store.save_problem or router.rollouts.problem,
        "monitoring_problem": router.monitor.problem,
        "cluster": None if router.cluster is None else {
            "name": router.cluster.store.cfg.name, "leader": router.cluster.leader,
            "applied_version": router.cluster.state.version, "store_up": router.cluster.store.up,
            "problem": router.cluster.problem},
    }


def _add_views(router: Router, rt: Runtime, route: dict[str, Any], now: float) -> None:
    """Per route: the 15-minute series, the gates' progress, stale markers, the last comparison."""
    name = route["name"]
    ledger = rt.ledger
    route["series"] = ledger.series_snapshot(name)
    shadow = ledger.shadow_stats(name) if route["shadow"] else None
    route["shadow_last_compared_at"] = shadow.last_compared_at if shadow is not None else None
    info = route["rollout"]
    rc = rt.table.by_name[name].config
    route["stale"] = None
    if info is None or rc.rollout is None:
        return
    evidence = ledger.evidence(name) or StepEvidence()
    info["progress"] = progress(info, rc.rollout.policy, evidence, router.rollouts.feedback, now)
    phase = Phase(info["phase"])
    if phase in TERMINAL:
        # Nothing will be decided any more: the window and, once mirroring stops, the shadow's
        # figures no longer move. Say since when.
        last = info.get("last_decision") or {}
        since = last.get("time") if last.get("phase") == str(phase) else None
        route["stale"] = {"reason": str(phase), "since": since}


def backends(rt: Runtime) -> dict[str, list[dict[str, Any]]]:
    """Each endpoint's health and connections: the live pools', and the mirror's own (`mirror`)."""
    now = time.monotonic()
    out: dict[str, list[dict[str, Any]]] = {}
    for name, group in rt.groups.items():
        mirror = {p.endpoint.url: p for p in rt.shadow_groups[name].pools} if name in rt.shadow_groups else {}
        out[name] = []
        for pool, st in zip(group.pools, group.states, strict=True):
            shadow = mirror.get(pool.endpoint.url)
            out[name].append({
                "url": pool.endpoint.url, "idle": len(pool.idle), "busy": pool.busy,
                "mirror": {"idle": len(shadow.idle), "busy": shadow.busy} if shadow is not None else None,
                "available": st.available(now), "healthy": st.healthy,
                "consecutive_failures": st.consecutive_failures})
    return out


def initial_state(router: Router) -> dict[str, Any]:
    """The page's first view: /-/status plus what the page otherwise fetches per route, and alerts."""
    body = status(router)
    return {"status": body, "details": [_details(router, r) for r in body["routes"]], "alerts": _alerts(router)}


def _details(router: Router, route: dict[str, Any]) -> dict[str, Any]:
    """The same bodies as GET /-/routes/NAME/shadow, .../diffs?limit=5 and .../rollout?tail=10."""
    name = route["name"]
    out: dict[str, Any] = {"shadow": None, "diffs": None, "rollout": None}
    stats = router.ledger.shadow_stats(name)
    rc = router.runtime.table.by_name[name].config
    if rc.shadow is not None and stats is not None:
        cfg = rc.shadow
        out["shadow"] = {"route": name, "primary": rc.primary, "shadow_backend": cfg.backend, "percent": cfg.percent,
                         "format": cfg.compare.format, "in_flight": router.mirror.in_flight(name), **stats.report()}
        out["diffs"] = list(stats.recent)[-DIFFS_SHOWN:][::-1]
    if route["rollout"] is not None:
        out["rollout"] = {**route["rollout"], "log": router.rollouts.tail(name, LOG_SHOWN)}
    return out


def _alerts(router: Router) -> dict[str, Any]:
    """As the page's fetch of GET /-/alerts would see it: {status, body}."""
    detector = router.monitor.detector
    if detector is None:
        return {"status": 200, "body": {"enabled": False, "alerts": [], "active": []}}
    return {"status": 200, "body": {"enabled": True, "alerts": [a.to_json() for a in detector.recent(ALERTS_SHOWN)],
                                    "active": [a.to_json() for a in detector.active()]}}
