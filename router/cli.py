"""The `model-router` command line."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from router import __version__
from router.admin.client import AdminClient, AdminError
from router.config import Config, ConfigError, load_config
from router.control.steps import step_label

log = logging.getLogger("router")


def config_warnings(config: Config, env: dict[str, str] | os._Environ[str]) -> list[str]:
    """What is valid but probably not meant: printed by `validate` (the router runs the same file)."""
    out = []
    for i, route in enumerate(config.routes):
        if route.rollout is not None and route.candidate is not None:
            steps = route.rollout.policy.steps
            if route.split.candidate_percent != steps[0]:
                out.append(f"routes[{i}].split.candidate_percent: {route.split.candidate_percent:g} is overridden by "
                           f"the rollout of route {route.name!r}, which starts at {step_label(0, steps)}")
    env_name = config.admin.token_env
    if env_name and not env.get(env_name):
        out.append(f"admin.token_env: ${env_name} is not set in this environment: a router started here would "
                   "refuse every change (promote, rollback, split, reload)")
    return out


def _validate(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.file)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    print(config.summary())
    for warning in config_warnings(config, os.environ):
        print(f"{args.file}: warning: {warning}", file=sys.stderr)
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
        if rollout and rollout["phase"] != "completed":
            phase += " " + step_label(rollout["step_index"], rollout["steps"])
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
    for name, shadow in shadows.items():
        if shadow.get("mirroring_stopped"):
            print(f"{name}: mirroring stopped: {shadow['mirroring_stopped']}")
    if status.get("rollout_problem") or status.get("state_problem"):
        print(f"\nproblem: {status.get('rollout_problem') or status.get('state_problem')}")
    return 0


def _route_action(args: argparse.Namespace) -> int:
    body = {"actor": args.actor or getpass.getuser(), "reason": args.reason}
    result = _admin(args).post(f"/-/routes/{args.route}/{args.command}", body)
    where = result.get("step_label") or f"step index {result['step_index']}"
    print(f"{result['route']}: {result['action']} -> {result['phase']}, {where}: {result['reason']}")
    return 0


def _split(args: argparse.Namespace) -> int:
    result = _admin(args).post(f"/-/routes/{args.route}/split", {"candidate_percent": args.percent})
    print(f"{result['route']}: candidate_percent {result['candidate_percent']:g} (persisted)")
    return 0


def _diffs(args: argparse.Namespace) -> int:
    result = _admin(args).get(f"/-/routes/{args.route}/diffs?limit={args.limit}")
    if args.json:
        # The outputs are kept as text previews; give them back as JSON where they parse.
        for d in result["diffs"]:
            for side in ("live", "shadow"):
                with contextlib.suppress(TypeError, ValueError):
                    d[side] = json.loads(d[side])
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
        print(f"model-router: reload failed, the router keeps its previous config:\n{exc}", file=sys.stderr)
        return 1
    print(result["message"])
    return 0


def _finalize(args: argparse.Namespace) -> int:
    from router.control.finalize import FinalizeError, diff, finalize, write_atomically

    path = Path(args.config)
    try:
        old, new = finalize(path, args.route)
    except (FinalizeError, OSError) as exc:
        print(f"model-router: finalize: {exc}", file=sys.stderr)
        return 2
    phase = _phase(args)
    if phase is not None and phase != "promoted":
        print(f"model-router: finalize: the rollout of {args.route!r} is {phase}, not promoted: this change would "
              "start a rollout of the old primary" + ("" if args.force else "; pass --force to write it anyway"),
              file=sys.stderr)
        if args.write and not args.force:
            return 1
    print(diff(path, old, new), end="")
    if not args.write:
        print(f"\n# apply with: model-router finalize {args.route} --config {path} --write"
              f"\n# then reload: model-router reload")
        return 0
    write_atomically(path, new)
    print(f"\nwrote {path}; now reload: model-router reload (or kill -HUP the router)")
    return 0


def _phase(args: argparse.Namespace) -> str | None:
    """The route's rollout phase if the router answers (finalize also works with the router down)."""
    try:
        info = _admin(args).get(f"/-/routes/{args.route}/rollout?tail=0")
    except AdminError:
        return None
    return str(info.get("phase")) if isinstance(info, dict) else None


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="model-router", description="A traffic router for ML models.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = sub.add_parser("serve", help="run the router", description="Run the router on a routing YAML file.")
    p.add_argument("--config", "-c", required=True, metavar="FILE", help="routing YAML file")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"],
                   help="least severe log messages shown (default: info)")
    p.set_defaults(func=_serve)
    p = sub.add_parser("validate", help="check a routing YAML file; exit 2 on errors",
                       description="Check a routing YAML file: errors as FILE:LINE: path: message (exit 2), "
                       "then warnings about settings that are valid but probably not meant.")
    p.add_argument("file", metavar="FILE", help="routing YAML file to check")
    p.set_defaults(func=_validate)

    admin = argparse.ArgumentParser(add_help=False)
    admin.add_argument("--admin", metavar="HOST:PORT",
                       help="admin address of the router (default $ROUTER_ADMIN or 127.0.0.1:9901)")
    admin.add_argument("--token", help="admin bearer token for changes (default $ROUTER_ADMIN_TOKEN)")
    route_help = "route name, as in the YAML's routes[].name"
    p = sub.add_parser("status", parents=[admin], help="routes, phases, splits, agreement, latency",
                       description="One line per route: rollout phase and step, split, shadow agreement, latency.")
    p.add_argument("--json", action="store_true", help="print the admin API's status and shadow reports as JSON")
    p.set_defaults(func=_status)
    for action, text in (("promote", "advance one rollout step now, or give the approval the last step waits for"),
                         ("rollback", "send all traffic to the primary at once, in any phase (promoted included)"),
                         ("pause", "hold the rollout at its step"), ("resume", "continue a paused rollout"),
                         ("restart", "start a paused or rolled-back rollout again from the first step")):
        p = sub.add_parser(action, parents=[admin], help=text, description=text[0].upper() + text[1:] + ".")
        p.add_argument("route", metavar="ROUTE", help=route_help)
        p.add_argument("--reason", help="why, for the decision log and the webhook")
        p.add_argument("--actor", help="who, for the decision log and the webhook (default: your user name)")
        p.set_defaults(func=_route_action)
    p = sub.add_parser("split", parents=[admin], help="set a route's candidate percentage at run time",
                       description="Set the candidate's share of a route without a rollout block (persisted).")
    p.add_argument("route", metavar="ROUTE", help=route_help)
    p.add_argument("percent", type=float, metavar="PERCENT", help="candidate share, 0 to 100")
    p.set_defaults(func=_split)
    p = sub.add_parser("diffs", parents=[admin], help="recent shadow disagreements",
                       description="The most recent requests on which the shadow disagreed with the live model.")
    p.add_argument("route", metavar="ROUTE", help=route_help)
    p.add_argument("--limit", type=_positive, default=10, metavar="N", help="how many, newest first (default 10)")
    p.add_argument("--json", action="store_true", help="print them as JSON, with the outputs as JSON values")
    p.set_defaults(func=_diffs)
    p = sub.add_parser("reload", parents=[admin], help="re-read the routing YAML",
                       description="Ask the router to re-read its routing YAML; on an error it keeps the old one "
                       "and this prints why.")
    p.set_defaults(func=_reload)
    p = sub.add_parser("finalize", parents=[admin], help="print (or make) the YAML change that finishes a promotion",
                       description="Make a promoted candidate the primary in the YAML: prints the change as a "
                       "diff; --write edits the file in place (atomically, comments kept). Reload afterwards.")
    p.add_argument("route", metavar="ROUTE", help=route_help)
    p.add_argument("--config", "-c", default="config/router.yaml", metavar="FILE",
                   help="routing YAML file to change (default config/router.yaml)")
    p.add_argument("--write", action="store_true", help="edit the file instead of printing the diff only")
    p.add_argument("--force", action="store_true", help="write even if the router says the rollout is not promoted")
    p.set_defaults(func=_finalize)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result: int = args.func(args)
    except AdminError as exc:
        print(f"model-router: {exc}", file=sys.stderr)
        return 1
    return result
