"""`model-router finalize ROUTE`: the YAML change that finishes a promotion.

After a promotion the candidate serves everything; finishing means naming it the primary. The
change swaps the route's `primary:` and `candidate:` values (and the shadow's `backend:` when it
pointed at the candidate), editing only those lines so comments, anchors and layout stay. The old
primary stays named as the candidate, at hand; on reload the router records the rollout as
complete and starts no rollout of it (see docs/operations.md). The result is validated before it
is printed or written, and written by an atomic replace.
"""

from __future__ import annotations

import difflib
import os
import tempfile
from pathlib import Path

import yaml

from router.config import ConfigError, RouteConfig, parse_config


class FinalizeError(Exception):
    """The change cannot be made: the message says why and what to do."""


def _line_of(node: yaml.MappingNode, key: str) -> tuple[int, yaml.Node] | None:
    for k, v in node.value:
        if isinstance(k, yaml.ScalarNode) and k.value == key:
            return k.start_mark.line, v
    return None


def _route_node(root: yaml.Node | None, name: str) -> yaml.MappingNode:
    routes = _line_of(root, "routes") if isinstance(root, yaml.MappingNode) else None
    if routes is None or not isinstance(routes[1], yaml.SequenceNode):
        raise FinalizeError("the file has no routes list")
    for item in routes[1].value:
        found = _line_of(item, "name") if isinstance(item, yaml.MappingNode) else None
        if found is not None and isinstance(found[1], yaml.ScalarNode) and found[1].value == name:
            assert isinstance(item, yaml.MappingNode)
            return item
    raise FinalizeError(f"no route named {name!r} in the file")


def _set_value(lines: list[str], node: yaml.Node, old: str, new: str) -> None:
    """Replace the scalar `old` written at `node`'s place by `new`, in that line only."""
    if not isinstance(node, yaml.ScalarNode) or node.start_mark.line != node.end_mark.line:
        raise FinalizeError(f"cannot edit the value {old!r} in place (write it as a plain value on one line)")
    i, start, end = node.start_mark.line, node.start_mark.column, node.end_mark.column
    line = lines[i]
    quoted = line[start:end]
    if quoted.strip("'\"") != old:
        raise FinalizeError(f"line {i + 1}: expected {old!r} at column {start + 1}")
    lines[i] = line[:start] + quoted.replace(old, new) + line[end:]


def finalized_text(text: str, name: str, route: RouteConfig) -> str:
    """The file with the route's candidate made its primary (and the old primary its candidate)."""
    if route.candidate is None:
        raise FinalizeError(f"route {name!r} has no candidate: nothing to finalize")
    try:
        root = yaml.compose(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except yaml.YAMLError as exc:
        raise FinalizeError(f"cannot read the YAML: {exc}") from None
    node = _route_node(root, name)
    primary, candidate = _line_of(node, "primary"), _line_of(node, "candidate")
    assert primary is not None and candidate is not None  # the file validated
    lines = text.splitlines(keepends=True)
    _set_value(lines, primary[1], route.primary, route.candidate)
    _set_value(lines, candidate[1], route.candidate, route.primary)
    shadow = _line_of(node, "shadow")
    if route.shadow is not None and route.shadow.backend == route.candidate and shadow is not None:
        backend = _line_of(shadow[1], "backend") if isinstance(shadow[1], yaml.MappingNode) else None
        if backend is None:
            raise FinalizeError("cannot find the shadow's backend line")
        _set_value(lines, backend[1], route.candidate, route.primary)
    return "".join(lines)


def finalize(path: Path, name: str) -> tuple[str, str]:
    """(the file as it is, as it should be); FinalizeError when the change cannot be made safely."""
    text = path.read_text(encoding="utf-8")
    try:
        config = parse_config(text, str(path))
    except ConfigError as exc:
        raise FinalizeError(f"{path} is not valid now; fix it first:\n{exc}") from None
    route = next((r for r in config.routes if r.name == name), None)
    if route is None:
        raise FinalizeError(f"no route named {name!r} in {path}")
    new = finalized_text(text, name, route)
    try:
        parse_config(new, str(path))
    except ConfigError as exc:  # never write a file the router would refuse
        raise FinalizeError(f"the edited file would not be valid:\n{exc}") from None
    return text, new


def diff(path: Path, old: str, new: str) -> str:
    return "".join(difflib.unified_diff(old.splitlines(keepends=True), new.splitlines(keepends=True),
                                        f"a/{path.name}", f"b/{path.name}"))


def write_atomically(path: Path, text: str) -> None:
    """Write next to the file, flush to disk, then rename over it: a reader sees the old or the new file."""
    mode = path.stat().st_mode & 0o7777
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


