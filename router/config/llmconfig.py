"""The LLM-traffic keys of the routing YAML: model matching, the judge, and their readers.

Kept apart from `router.config` (already large) so the LLM features read as one unit; `config`
calls these readers and stores the frozen results in its own types.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass

import yaml

from router.config.units import parse_duration
from router.config.yamlsrc import Reader, join

_GLOB = frozenset("*?[")


@dataclass(frozen=True, slots=True)
class ModelMatch:
    """`match.model`: exact names and globs; a request matches when its body's `model` is one of them."""

    exact: frozenset[str]
    globs: tuple[str, ...]  # the source text, for display
    regex: re.Pattern[str] | None  # every glob compiled into one alternation

    @classmethod
    def build(cls, names: list[str]) -> ModelMatch:
        globs = tuple(n for n in names if _GLOB & set(n))
        regex = re.compile("|".join(fnmatch.translate(g) for g in globs)) if globs else None
        return cls(frozenset(n for n in names if n not in globs), globs, regex)

    def matches(self, model: str) -> bool:
        return model in self.exact or (self.regex is not None and self.regex.match(model) is not None)

    def __str__(self) -> str:
        return ", ".join(sorted(self.exact) + list(self.globs))


@dataclass(frozen=True, slots=True)
class JudgeConfig:
    """`compare.judge`: an OpenAI-compatible model that compares live and shadow answers blind."""

    url: str  # base URL; the judge is asked at {url}/v1/chat/completions
    model: str
    sample_percent: float = 5.0
    max_per_minute: int = 30
    max_concurrency: int = 4
    timeout: float = 30.0


_JUDGE_KEYS = frozenset({"url", "model", "sample_percent", "max_per_minute", "max_concurrency", "timeout"})


def read_models(r: Reader, node: yaml.Node, path: str) -> ModelMatch | None:
    """A name or a list of names and globs, none empty."""
    names = [r.string(node, path)] if isinstance(node, yaml.ScalarNode) else r.string_list(node, path)
    if names is None or None in names:
        return None
    if not names or "" in names:
        r.error(node, path, "give one or more model names or globs (e.g. llama-3-8b or \"llama-3-*\")")
        return None
    return ModelMatch.build([n for n in names if n is not None])


def read_judge(r: Reader, node: yaml.Node, path: str) -> JudgeConfig | None:
    m = r.mapping(node, path, _JUDGE_KEYS)
    if m is None:
        return None
    before = len(r.issues)
    for key in ("url", "model"):
        if key not in m:
            r.error(node, join(path, key), "required key is missing")
    url = r.get(m, "url", path, r.string, None)
    if url is not None and not re.match(r"^https?://[^/\s]+/?$", url):
        r.error(m["url"], join(path, "url"), f"bad URL {url!r}: give http://host:port (the judge's base URL)")
    model = r.get(m, "model", path, r.string, None)
    d = JudgeConfig("", "")
    percent = r.get(m, "sample_percent", path, r.number, d.sample_percent)
    if percent is not None and not 0 < percent <= 100:
        r.error(m["sample_percent"], join(path, "sample_percent"), "must be within (0, 100]")
    per_minute = r.get(m, "max_per_minute", path, r.integer, d.max_per_minute)
    concurrency = r.get(m, "max_concurrency", path, r.integer, d.max_concurrency)
    for key, value in (("max_per_minute", per_minute), ("max_concurrency", concurrency)):
        if value is not None and value < 1:
            r.error(m[key], join(path, key), "must be at least 1")
    timeout = r.get(m, "timeout", path, lambda n, p: r.converted(n, p, parse_duration), d.timeout)
    if len(r.issues) > before or None in (url, model, percent, per_minute, concurrency, timeout):
        return None
    assert url and model
    return JudgeConfig(url.rstrip("/"), model, float(percent or 0), int(per_minute or 1), int(concurrency or 1),
                       float(timeout or 1))
