"""The parts of a rollout's life around the decisions: finishing a promotion in the YAML, what
to stop once a rollout is over, and the disagreement evidence a decision is explained with.

Pure helpers for the rollout loop (`router.control.rollout`), which applies what they return.
"""

from __future__ import annotations

from typing import Any

from router.analysis.decision import Phase
from router.config import RouteConfig
from router.control.shadowstats import OTHER, ShadowStats

TOP_FIELDS = 3


def completes(old_key: tuple[str, str], old_phase: Phase, new_primary: str) -> bool:
    """A reload that names a promoted candidate as the primary finishes that rollout."""
    return old_phase is Phase.PROMOTED and new_primary == old_key[1]


def reverse_of(old_key: tuple[str, str], new_key: tuple[str, str]) -> bool:
    """primary and candidate swapped: the YAML keeps the old primary at hand, it does not ask for a rollout of it."""
    return new_key == (old_key[1], old_key[0])


def mirror_stop(route: RouteConfig, phase: str) -> str | None:
    """Why the route's shadow gets no more copies once its rollout ended (None: keep mirroring)."""
    shadow = route.shadow
    if shadow is None or shadow.after_rollout != "stop" or shadow.backend != route.candidate:
        return None
    if phase not in (Phase.ROLLED_BACK, Phase.PROMOTED, "completed"):
        return None
    return f"the rollout of {shadow.backend} is {phase} (shadow.after_rollout: stop)"


def top_fields(stats: ShadowStats | None, n: int = TOP_FIELDS) -> list[dict[str, Any]]:
    """The fields that disagree most often (by rate, then count), from the route's shadow stats."""
    if stats is None:
        return []
    rows = [(k / total, k, total, name) for name, (total, k) in stats.fields.items() if k and name != OTHER]
    rows.sort(key=lambda r: (-r[0], -r[1], r[3]))
    return [{"field": name, "rate": round(rate, 4), "mismatches": k, "samples": total}
            for rate, k, total, name in rows[:n]]


def fields_text(top: list[dict[str, Any]]) -> str:
    """'$.a 32.1% (412/1283), $.b 2.0% (26/1283)' for a decision's reason."""
    return ", ".join(f"{f['field']} {100 * f['rate']:.1f}% ({f['mismatches']}/{f['samples']})" for f in top)
