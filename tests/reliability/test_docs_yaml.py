"""Every ```yaml snippet in README.md and docs/*.md is valid config.

A snippet with a top-level `listen` is a whole file and goes to the loader as is. Any other is a
fragment: its keys say where it belongs (top level, or one route), and it is embedded into a
minimal config there. A first line `# snippet: whole|top|route` overrides the guess.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import pytest
import yaml

from router.config import _ROUTE_KEYS, _TOP, ConfigError, parse_config
from tests.helpers import ROOT

FENCE = re.compile(r"^```yaml[ \t]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
MARKER = re.compile(r"^#\s*snippet:\s*(whole|top|route)\s*$")
BACKENDS = {"fraud-v1": {"url": "http://127.0.0.1:9001"}, "fraud-v2": {"url": "http://127.0.0.1:9002"}}


@dataclass(frozen=True)
class Snippet:
    file: str
    line: int
    text: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}"


def snippets() -> list[Snippet]:
    found = []
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        text = path.read_text()
        for m in FENCE.finditer(text):
            found.append(Snippet(str(path.relative_to(ROOT)), text.count("\n", 0, m.start()) + 2, m[1]))
    return found


SNIPPETS = snippets()


def kind(snippet: Snippet, doc: dict[str, Any]) -> str:
    marker = MARKER.match(snippet.text.split("\n", 1)[0])
    if marker:
        return marker[1]
    if "listen" in doc:
        return "whole"
    if set(doc) <= _TOP:
        return "top"
    if set(doc) <= _ROUTE_KEYS:
        return "route"
    raise AssertionError(f"{snippet}: cannot tell where keys {sorted(doc)} belong; add '# snippet: KIND'")


def embedded(where: str, doc: dict[str, Any]) -> dict[str, Any]:
    route: dict[str, Any] = {"name": "fraud", "match": {"path_prefix": "/v1/models/fraud"},
                             "primary": "fraud-v1", "candidate": "fraud-v2"}
    config: dict[str, Any] = {"listen": "127.0.0.1:8080", "backends": dict(BACKENDS), "routes": [route]}
    if where == "route":
        route.update(doc)
    else:
        config.update({k: v for k, v in doc.items() if k != "backends"})
        config["backends"].update(doc.get("backends", {}))
    return config


def test_the_docs_have_yaml_snippets() -> None:
    assert len(SNIPPETS) >= 6, [str(s) for s in SNIPPETS]


@pytest.mark.parametrize("snippet", SNIPPETS, ids=str)
def test_yaml_snippet_is_valid_config(snippet: Snippet) -> None:
    doc = yaml.safe_load(snippet.text)
    assert isinstance(doc, dict), f"{snippet}: a snippet must be a mapping"
    where = kind(snippet, doc)
    text = snippet.text if where == "whole" else yaml.safe_dump(embedded(where, doc), sort_keys=False)
    try:
        parse_config(text, str(snippet) if where == "whole" else f"{snippet} embedded as {where}")
    except ConfigError as exc:
        pytest.fail(f"{snippet} ({where}) is not valid config:\n{exc}")
