"""The `model-router` command line."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

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
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result: int = args.func(args)
    return result
