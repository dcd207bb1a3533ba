"""What the router knows of each model-serving protocol: its inference paths and its error shape.

A route's protocol is its `protocol:` key, else its shadow's `compare.format`; a request that
matched no route (or was refused before matching) is recognised by its path when the path is
unmistakable (`/v2/...`, `/v1/models/NAME:predict`, `/v1/chat/completions`, ...).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal, get_args

Protocol = Literal["kserve-v1", "open-inference-v2", "tfserving", "mlflow", "openai", "json"]
PROTOCOLS: tuple[str, ...] = get_args(Protocol)

# Inference calls per protocol, matched against the end of the path so a route may sit under a
# prefix (a gateway's /models/fraud/...). Everything else (health, metadata, model repository
# load/unload, file uploads) is control plane: mirroring it would act on the shadow twice.
_INFERENCE: dict[str, tuple[str, ...]] = {
    "kserve-v1": (r"/v1/models/[^/]+:predict",),
    "tfserving": (r"/v1/models/[^/]+(?:/versions/[^/]+|/labels/[^/]+)?:(?:predict|classify|regress)",),
    "open-inference-v2": (r"/v2/models/[^/]+(?:/versions/[^/]+)?/infer",),
    "mlflow": (r"/invocations",),
    "openai": (r"/v1/chat/completions", r"/v1/completions", r"/v1/embeddings", r"/v1/responses"),
}
# Never mirrored, whatever `shadow.paths` says: the Open Inference repository API loads and
# unloads models.
_NEVER = re.compile(r"(?:^|/)v2/repository(?:/|$)")

_BY_PATH: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"^/v2/"), "open-inference-v2"),
    (re.compile(r"^/v1/models/[^/]+:(?:predict|explain)$"), "kserve-v1"),
    (re.compile(r"^/v1/(?:chat/completions|completions|embeddings|responses|models)$"), "openai"),
    (re.compile(r"^/invocations$"), "mlflow"),
)


def protocol_of_path(path: str | bytes) -> str | None:
    """The protocol a request path plainly belongs to, or None."""
    text = path.decode("latin-1") if isinstance(path, bytes) else path
    text = text.partition("?")[0]
    return next((name for pattern, name in _BY_PATH if pattern.search(text)), None)


@dataclass(frozen=True, slots=True)
class MirrorPaths:
    """Which request paths a shadow copies: `patterns` (None: every path) minus the never-list."""

    patterns: re.Pattern[str] | None
    text: tuple[str, ...]  # as configured or defaulted, for messages and docs

    def mirrors(self, path: str) -> bool:
        if _NEVER.search(path):
            return False
        return self.patterns is None or self.patterns.search(path) is not None


EVERY_PATH = MirrorPaths(None, ())


def default_mirror_paths(protocol: str | None) -> MirrorPaths:
    """Inference calls only, for a known protocol; every path for `json` or none."""
    regexes = _INFERENCE.get(protocol or "")
    if regexes is None:
        return EVERY_PATH
    return MirrorPaths(re.compile("(?:" + "|".join(regexes) + ")$"), regexes)


def mirror_paths(globs: list[str]) -> MirrorPaths:
    """`shadow.paths`: shell-style patterns (`*` any characters, `?` one) each matching a whole
    path; raises ValueError on an empty or relative pattern."""
    parts = []
    for i, glob in enumerate(globs):
        if not glob.startswith("/"):
            raise ValueError(f"[{i}]: a path pattern starts with '/', got {glob!r}")
        parts.append("".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in glob))
    return MirrorPaths(re.compile("^(?:" + "|".join(parts) + ")$"), tuple(globs))
