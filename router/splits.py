"""Candidate percentages set at run time (operators) or driven by the rollout loop.

Owned by the ledger. A runtime split holds until the YAML changes that route (its primary,
candidate or YAML percentage); it is persisted in the state file so it survives restarts.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from router.config import Config, RouteConfig
from router.state import StateStore

log = logging.getLogger("router.splits")


@dataclass(frozen=True, slots=True)
class SplitOverride:
    """A runtime candidate percentage, and the YAML route it was set against."""

    percent: float
    base: tuple[str, str | None, float]  # (primary, candidate, YAML candidate_percent)

    @staticmethod
    def base_of(route: RouteConfig) -> tuple[str, str | None, float]:
        return (route.primary, route.candidate, route.split.candidate_percent)


class Splits:
    """Candidate percentages set at run time; they hold until the YAML changes that route."""

    def __init__(self, store: StateStore) -> None:
        self.store = store
        self.overrides: dict[str, SplitOverride] = {}
        # Percentages set by the rollout controller for routes under automatic rollout; they win.
        self.driven: dict[str, float] = {}
        for name, raw in store.load().get("splits", {}).items():
            try:
                primary, candidate, base_percent = raw["base"]
                base = (str(primary), None if candidate is None else str(candidate), float(base_percent))
                self.overrides[name] = SplitOverride(float(raw["percent"]), base)
            except (KeyError, TypeError, ValueError):
                log.error("state file %s: ignoring unreadable split for route %r", store.path, name)

    def percent(self, route: RouteConfig) -> float:
        driven = self.driven.get(route.name)
        if driven is not None:
            return driven
        o = self.overrides.get(route.name)
        return route.split.candidate_percent if o is None else o.percent

    def set(self, route: RouteConfig, percent: float) -> None:
        self.overrides[route.name] = SplitOverride(percent, SplitOverride.base_of(route))
        self.save()

    def reconcile(self, config: Config) -> list[str]:
        """Drop overrides whose route the YAML removed or changed; returns their names."""
        routes = {r.name: r for r in config.routes}
        stale = [name for name, o in self.overrides.items()
                 if name not in routes or tuple(o.base) != SplitOverride.base_of(routes[name])]
        for name in stale:
            del self.overrides[name]
        if stale:
            self.save()
        return stale

    def save(self) -> None:
        data = self.store.load() if self.store.path.exists() else {}
        data["splits"] = {n: {"percent": o.percent, "base": list(o.base)} for n, o in self.overrides.items()}
        self.store.save(data)
