"""The `model-router` command line."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from typing import Any

from router.client import AdminClient, AdminError
from router.config import ConfigError, load_config


def _validate(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.file)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    print(config.summary())
    for route in config.routes:
        target = route.match.path or route.match.path_prefix or route.match.path_regex
        extra = f", candidate {route.candidate} at {route.split.candidate_percent:g}%" if route.candidate else ""
        if route.shadow:
            extra += f", shadow {route.shadow.backend} ({route.shadow.compare.format}, {route.shadow.percent:g}%)"
        if route.rollout:
            extra += ", rollout " + "/".join(f"{s:g}" for s in route.rollout.policy.steps)
        if route.match.model is not None:
            target = f"{target} model [{route.match.model}]"
        if route.fallback:
            extra += ", fallback " + ", ".join(route.fallback)
        print(f"  route {route.name}: {target} -> {route.primary}{extra}")
    return 0


def _serve(args: argparse.Namespace) -> int:
    from router.app import check_parsers, serve

    logging.basicConfig(level=getattr(logging, args.log_level.upper()),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    problem = check_parsers()
    if problem:
        print(f"model-router: {problem}", file=sys.stderr)
        return 1
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency; keep running without it
        runner = asyncio.run
    else:
        runner = uvloop.run
    try:
        runner(serve(config, args.config))
    except OSError as exc:
        print(f"model-router: cannot start: {exc}", file=sys.stderr)
        return 1
    return 0


def _admin(args: argparse.Namespace) -> AdminClient:
    return AdminClient(args.admin, args.token)


def _pct(value: Any) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _status(args: argparse.Namespace) -> int:
    client = _admin(args)
    status = client.get("/-/status")
    shadows = {r["name"]: client.get(f"/-/routes/{r['name']}/shadow") for r in status["routes"] if r.get("shadow")}
    if args.json:
        print(json.dumps({**status, "shadow": shadows}, indent=2))
        return 0
    rows = [("ROUTE", "PHASE", "SPLIT", "AGREEMENT", "LATENCY p99 RATIO", "REQUESTS")]
    for r in status["routes"]:
        rollout = r.get("rollout") or {}
        phase = rollout.get("phase", "-")
        if rollout:
            phase += f" {rollout['step_index'] + 1}/{len(rollout['steps'])}"
        split = f"{r['primary']} {100 - r['candidate_percent']:g}%"
        if r.get("candidate"):
            split += f" / {r['candidate']} {r['candidate_percent']:g}%"
        shadow = shadows.get(r["name"]) or {}
        agreement = shadow.get("agreement") or {}
        agree = _pct(agreement.get("rate"))
        if agreement.get("n"):
            agree += f" [{_pct(agreement['low'])}, {_pct(agreement['high'])}]"
        ratio = ((shadow.get("latency_seconds") or {}).get("ratio") or {}).get("p99")
        rows.append((r["name"], phase, split, agree, "-" if ratio is None else f"{ratio:.2f}",
                     str(sum(r["requests_by_backend"].values()))))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    if status.get("rollout_problem") or status.get("state_problem"):
        print(f"\nproblem: {status.get('rollout_problem') or status.get('state_problem')}")
    return 0


def _route_action(args: argparse.Namespace) -> int:
    result = _admin(args).post(f"/-/routes/{args.route}/{args.command}")
    print(f"{result['route']}: {result['action']} -> {result['phase']} (step {result['step_index']}): "
          f"{result['reason']}")
    return 0


def _split(args: argparse.Namespace) -> int:
    result = _admin(args).post(f"/-/routes/{args.route}/split", {"candidate_percent": args.percent})
    print(f"{result['route']}: candidate_percent {result['candidate_percent']:g} (persisted)")
    return 0


def _diffs(args: argparse.Namespace) -> int:
    result = _admin(args).get(f"/-/routes/{args.route}/diffs?limit={args.limit}")
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    if not result["diffs"]:
        print(f"{args.route}: no disagreements recorded")
    for d in result["diffs"]:
        print(f"{d['request_id']}  {d['method']} {d['path']}  fields: {', '.join(d['fields'])}")
        print(f"  live:   {d['live'][:200]}")
        print(f"  shadow: {d['shadow'][:200]}")
    return 0


def _reload(args: argparse.Namespace) -> int:
    try:
        result = _admin(args).post("/-/reload")
    except AdminError as exc:
        print(f"model-router: reload failed: {exc}", file=sys.stderr)
        return 1
    print(result["message"])
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="model-router", description="A traffic router for ML models.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("serve", help="run the router")
    p.add_argument("--config", "-c", required=True, help="routing YAML file")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.set_defaults(func=_serve)
    p = sub.add_parser("validate", help="check a routing YAML file; exit 2 on errors")
    p.add_argument("file")
    p.set_defaults(func=_validate)

    admin = argparse.ArgumentParser(add_help=False)
    admin.add_argument("--admin", help="admin address host:port (default $ROUTER_ADMIN or 127.0.0.1:9901)")
    admin.add_argument("--token", help="admin bearer token (default $ROUTER_ADMIN_TOKEN)")
    p = sub.add_parser("status", parents=[admin], help="routes, phases, splits, agreement, latency")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_status)
    for action, text in (("promote", "advance one rollout step, or give the approval"),
                         ("rollback", "send all traffic back to the primary"), ("pause", "hold the rollout"),
                         ("resume", "continue a paused rollout"), ("restart", "start a rollout again from step 0")):
        p = sub.add_parser(action, parents=[admin], help=text)
        p.add_argument("route")
        p.set_defaults(func=_route_action)
    p = sub.add_parser("split", parents=[admin], help="set a route's candidate percentage at run time")
    p.add_argument("route")
    p.add_argument("percent", type=float)
    p.set_defaults(func=_split)
    p = sub.add_parser("diffs", parents=[admin], help="recent shadow disagreements")
    p.add_argument("route")
    p.add_argument("--limit", type=int, default=10)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_diffs)
    p = sub.add_parser("reload", parents=[admin], help="re-read the routing YAML")
    p.set_defaults(func=_reload)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result: int = args.func(args)
    except AdminError as exc:
        print(f"model-router: {exc}", file=sys.stderr)
        return 1
    return result
