"""Reading YAML with line numbers, collecting every error instead of stopping at the first.

PyYAML's node tree keeps the source position of each value; the typed getters here read from it
so that an error names `FILE:LINE: dotted.path: what is wrong`, the form `validate` prints.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import yaml

T = TypeVar("T")

# libyaml's parser keeps the same marks and is ~4x faster (a 1,000-route file in ~70 ms).
_LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@dataclass(frozen=True, slots=True)
class ConfigIssue:
    """One problem in a config file, with its place."""

    file: str
    line: int
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.path or '<top>'}: {self.message}"


class ConfigError(Exception):
    """A config file is invalid; `issues` lists every problem found."""

    def __init__(self, issues: list[ConfigIssue]) -> None:
        self.issues = tuple(issues)
        super().__init__("\n".join(str(i) for i in issues))


def join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def syntax_hint(text: str, line: int, column: int) -> str | None:
    """A plainer message for the two syntax errors people make most: a tab, and a line indented
    to no enclosing block. None: PyYAML's own message is the best we have."""
    lines = text.splitlines()
    if not 0 <= line < len(lines):
        return None
    here = lines[line]
    tab = here.find("\t")
    if tab != -1 and tab <= max(column, _indent(here)):
        return (f"a tab character at column {tab + 1}: YAML indents with spaces only; "
                "replace the tab with spaces")
    if not here.strip() or here.lstrip().startswith("#"):
        return None
    above = sorted({_indent(x) for x in lines[:line] if x.strip() and not x.lstrip().startswith("#")})
    mine = _indent(here)
    if not above or mine in above:
        return None
    lower = max((i for i in above if i < mine), default=0)
    upper = min((i for i in above if i > mine), default=None)
    options = f"{lower}" + (f" or {upper}" if upper is not None else "")
    return (f"line {line + 1} is indented by {mine} spaces, which lines up with no block above it: "
            f"did you mean {options} spaces, like the keys it belongs with?")


class Unreadable:
    """A scalar PyYAML cannot construct (unknown tag, bad base64, a timestamp out of range...)."""

    def __init__(self, problem: str) -> None:
        self.problem = problem

    def __repr__(self) -> str:
        return f"an unreadable value ({self.problem})"


def type_name(node: yaml.Node) -> str:
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    value = scalar(node)
    if isinstance(value, Unreadable):
        return repr(value)
    return "null" if value is None else f"{type(value).__name__} {value!r}"


def scalar(node: yaml.Node) -> Any:
    """The scalar's value, or Unreadable: no YAML input may raise past the loader."""
    # A constructor per value: a constructor caches every node it constructs, so a shared one
    # kept every file ever loaded alive (~9 MiB per reload of 2,000 routes). It costs ~2 us.
    try:
        return yaml.constructor.SafeConstructor().construct_object(node, deep=True)
    except Exception as exc:  # PyYAML raises many kinds here: ConstructorError, ValueError, binascii...
        problem = exc.problem if isinstance(exc, yaml.MarkedYAMLError) and exc.problem else str(exc)
        return Unreadable(problem.split("\n")[0][:120])


class Reader:
    """Typed access to a YAML node tree; errors are collected, and getters return None on error."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.issues: list[ConfigIssue] = []

    def error(self, node: yaml.Node | None, path: str, message: str) -> None:
        line = node.start_mark.line + 1 if node is not None else 1
        self.issues.append(ConfigIssue(self.file, line, path, message))

    def parse(self, text: str) -> yaml.Node | None:
        try:
            return yaml.compose(text, Loader=_LOADER)
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            line = mark.line + 1 if mark else 1
            problem = exc.problem or exc.context or "invalid YAML"
            hint = syntax_hint(text, mark.line, mark.column) if mark else None
            self.issues.append(ConfigIssue(self.file, line, "", f"YAML syntax: {hint or problem}"))
        except yaml.YAMLError as exc:
            self.issues.append(ConfigIssue(self.file, 1, "", f"YAML syntax: {exc}"))
        except RecursionError:
            self.issues.append(ConfigIssue(self.file, 1, "", "YAML nested too deeply"))
        return None

    def mapping(
        self, node: yaml.Node, path: str, allowed: frozenset[str] | None = None
    ) -> dict[str, yaml.Node] | None:
        """The mapping's entries by key; unknown and duplicate keys are errors."""
        if not isinstance(node, yaml.MappingNode):
            empty = isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:null" and not node.value
            hint = " (nothing is indented under it: should the lines below be indented further?)" if empty else ""
            self.error(node, path, f"expected a mapping, got {type_name(node)}{hint}")
            return None
        out: dict[str, yaml.Node] = {}
        for key_node, value in node.value:
            key = scalar(key_node) if isinstance(key_node, yaml.ScalarNode) else None
            if not isinstance(key, str):
                self.error(key_node, path, f"keys must be strings, got {type_name(key_node)}")
                continue
            if key in out:
                self.error(key_node, join(path, key), "duplicate key")
                continue
            if allowed is not None and key not in allowed:
                known = ", ".join(sorted(allowed))
                self.error(key_node, join(path, key), f"unknown key (allowed: {known})")
                continue
            out[key] = value
        return out

    def get(
        self, m: dict[str, yaml.Node], key: str, path: str,
        getter: Callable[[yaml.Node, str], T | None], default: T | None,
    ) -> T | None:
        """`m[key]` read by `getter` at `path.key`, or `default` when the key is absent."""
        return getter(m[key], join(path, key)) if key in m else default

    def sequence(self, node: yaml.Node, path: str) -> list[yaml.Node] | None:
        if not isinstance(node, yaml.SequenceNode):
            self.error(node, path, f"expected a list, got {type_name(node)}")
            return None
        return list(node.value)

    def typed(self, node: yaml.Node, path: str, kind: type[T], what: str) -> T | None:
        value = scalar(node) if isinstance(node, yaml.ScalarNode) else None
        # bool is an int subclass in Python; `true` is never a valid number here.
        if isinstance(value, kind) and not (isinstance(value, bool) and kind is not bool):
            return value
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)  # type: ignore[return-value]
        self.error(node, path, f"expected {what}, got {type_name(node)}")
        return None

    def string(self, node: yaml.Node, path: str) -> str | None:
        return self.typed(node, path, str, "a string")

    def number(self, node: yaml.Node, path: str) -> float | None:
        return self.typed(node, path, float, "a number")

    def integer(self, node: yaml.Node, path: str) -> int | None:
        return self.typed(node, path, int, "an integer")

    def boolean(self, node: yaml.Node, path: str) -> bool | None:
        return self.typed(node, path, bool, "true or false")

    def converted(self, node: yaml.Node, path: str, convert: Callable[[str], T]) -> T | None:
        """A string turned into a value by `convert`, whose ValueError text becomes the error."""
        value = scalar(node) if isinstance(node, yaml.ScalarNode) else None
        if isinstance(value, int | float) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str):
            self.error(node, path, f"expected a string, got {type_name(node)}")
            return None
        try:
            return convert(value)
        except ValueError as exc:
            self.error(node, path, str(exc))
            return None

    def string_list(self, node: yaml.Node, path: str) -> list[str] | None:
        items = self.sequence(node, path)
        if items is None:
            return None
        out = [self.string(item, join(path, i)) for i, item in enumerate(items)]
        strings = [s for s in out if s is not None]
        return strings if len(strings) == len(items) else None
