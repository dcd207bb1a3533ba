"""Candidate percentages set at run time (operators) or driven by the rollout loop.

Owned by the ledger. A runtime split holds until the YAML changes that route (its primary,
candidate or YAML percentage); it is persisted in the state file so it survives restarts.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from router.config import Config, RouteConfig
from router.control.state import StateStore

log = logging.getLogger("router.control.splits")


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
        saved = store.load().get("splits", {})
        rejected = []
        for name, raw in (saved.items() if isinstance(saved, dict) else [("<all>", None)]):
            override = saved_split(raw)
            if override is None:
                rejected.append(name)
            else:
                self.overrides[name] = override
        if rejected:
            # The file is hand-editable: a bad value must not take effect (150%, NaN), only be reported.
            problem = (f"state file {store.path}: ignored invalid saved splits for {', '.join(map(repr, rejected))} "
                       "(percent must be a number within 0..100); those routes use the YAML split")
            log.error("%s", problem)
            store.problem = store.problem or problem

    def percent(self, route: RouteConfig) -> float:
        driven = self.driven.get(route.name)
        if driven is not None:
            return driven
        o = self.overrides.get(route.name)
        return route.split.candidate_percent if o is None else o.percent

    def set(self, route: RouteConfig, percent: float) -> None:
        """Persist first, apply second: a split the disk did not take (OSError) never takes effect."""
        previous = self.overrides.get(route.name)
        self.overrides[route.name] = SplitOverride(percent, SplitOverride.base_of(route))
        try:
            self.save()
        except OSError:
            if previous is None:
                del self.overrides[route.name]
            else:
                self.overrides[route.name] = previous
            raise

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


def _percent(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 100:
        return None  # also NaN, which compares false with everything
    return float(value)


def saved_split(raw: object) -> SplitOverride | None:
    """A split read back from the state file, or None when any part of it is not what `save` writes."""
    if not isinstance(raw, dict) or not isinstance(raw.get("base"), list) or len(raw["base"]) != 3:
        return None
    primary, candidate, base_percent = raw["base"]
    percent, base_value = _percent(raw.get("percent")), _percent(base_percent)
    if (percent is None or base_value is None or not isinstance(primary, str)
            or not (candidate is None or isinstance(candidate, str))):
        return None
    return SplitOverride(percent, (primary, candidate, base_value))


