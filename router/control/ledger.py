"""The ledger: the one owner of mutable per-route state.

The data plane never writes a counter itself: it emits frozen outcome records (a live exchange
finished, a mirrored pair finished, a pair was compared, a fallback happened, feedback was
scored) and the ledger counts them. Everything else reads: the rollout loop reads `evidence()`,
metrics read `export()`, the admin API and the status page read `snapshot()` and the shadow report.

State kept here: request statistics, the current rollout step window of every route, shadow
statistics, candidate fallbacks and candidate percentages (set at run time by operators or driven
by the rollout loop). A cluster implementation keeps the same state in a shared store behind the
same methods, so neither the data plane nor its readers change.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

from mypy_extensions import mypyc_attr

from router.analysis.compare import DECODED_TOO_LARGE, Comparison
from router.analysis.decision import LlmEvidence, StepEvidence
from router.analysis.histogram import EXPORT_BOUNDS, EXPORT_STEP, layout_index
from router.analysis.llm import LlmOutcome
from router.config import Config, RouteConfig
from router.control.llmstats import LlmState
from router.control.shadowstats import ShadowStats
from router.control.splits import Splits
from router.control.timeseries import TimeSeries
from router.control.window import WindowCounters
from router.dataplane.policy import Choice
from router.observe.feedback import FeedbackResult, Scored

PREVIOUS_KEEP_S = 3600.0  # how long a replaced shadow report stays visible as `previous`


class LiveOutcome:
    """A live exchange ended (status 499: the client left). One per request, so a plain class: the
    native build compiles its constructor (a dataclass's or NamedTuple's stays interpreted Python,
    about 8,000 instructions a request). Read-only by convention, as the other outcome records."""

    __slots__ = ("backend", "fell_back", "route", "seconds", "status")

    def __init__(self, route: str, backend: str, status: int, seconds: float, fell_back: bool = False) -> None:
        self.route = route
        self.backend = backend
        self.status = status
        self.seconds = seconds
        self.fell_back = fell_back  # drawn for the candidate, served by the primary: no window sample

    def __repr__(self) -> str:
        return (f"LiveOutcome(route={self.route!r}, backend={self.backend!r}, status={self.status}, "
                f"seconds={self.seconds!r}, fell_back={self.fell_back})")


class PairOutcome(NamedTuple):
    """A mirrored request ended on every side: each side's status, transport error and latency."""

    route: str
    shadow_backend: str
    live_status: int
    live_error: str | None  # "incomplete": the live response was cut; says nothing about either model
    live_s: float
    shadow_status: int
    shadow_error: str | None  # transport error kind (timeout, connect_refused, ...)
    shadow_s: float
    truncated: bool  # a body was over the capture cap: not comparable

    @property
    def live_ok(self) -> bool:
        """A 2xx that arrived whole: comparable."""
        return self.live_error is None and 200 <= self.live_status < 300

    @property
    def shadow_ok(self) -> bool:
        return self.shadow_error is None and 200 <= self.shadow_status < 300


class ComparedOutcome(NamedTuple):
    """A live/shadow pair was compared (and, with noise cancellation, the primary's repeat)."""

    route: str
    shadow_backend: str
    main: Comparison
    repeat: Comparison | None
    diff: dict[str, Any] | None  # the disagreement as kept for /diffs, when they disagreed
    by_labels: bool = False  # compare.agree: labels, the gate counts label agreement only


@dataclass(frozen=True, slots=True)
class RouteSnapshot:
    """What the admin API shows of one route's counters, copied out at one moment."""

    name: str
    candidate_percent: float
    runtime_split: bool
    requests_by_backend: Mapping[str, int]
    sticky_key_missing: int
    fallbacks: int
    evidence: StepEvidence | None


class BackendCell:
    """One route's counters for one backend: what a request adds to, found by two dict lookups with
    string keys (their hashes cached) rather than by tuple keys hashed afresh on every request."""

    def __init__(self) -> None:
        self.by_status: dict[int, int] = {}  # finished requests by status; empty until one finishes
        self.choices: dict[str, int] = {}  # why the backend was chosen (policy reason) -> requests
        # latency counts per bucket, then +Inf, then the sum of observations
        self.latency = [0.0] * (len(EXPORT_BOUNDS) + 2)


class RequestStats:
    """Request counters and latency histograms by route and backend: plain ints, summable.

    Kept per (route, backend) cell; the exporters read flat views (`requests`, `latency`,
    `by_backend`, `choices`) built on demand, as a scrape is rare and a request is not."""

    def __init__(self) -> None:
        self.cells: dict[str, dict[str, BackendCell]] = {}
        self.sticky_key_missing: dict[str, int] = {}
        self.upstream_errors: dict[tuple[str, str], int] = {}

    def cell(self, route: str, backend: str) -> BackendCell:
        by_backend = self.cells.get(route)
        if by_backend is None:
            by_backend = self.cells[route] = {}
        cell = by_backend.get(backend)
        if cell is None:
            cell = by_backend[backend] = BackendCell()
        return cell

    def finished(self, route: str, backend: str, status: int, seconds: float) -> None:
        cell = self.cell(route, backend)
        by_status = cell.by_status
        by_status[status] = by_status.get(status, 0) + 1
        h = cell.latency
        h[layout_index(EXPORT_STEP, seconds)] += 1.0
        h[-1] += seconds

    @property
    def requests(self) -> dict[tuple[str, str, int], int]:
        return {(route, backend, status): n for route, by_backend in self.cells.items()
                for backend, cell in by_backend.items() for status, n in cell.by_status.items()}

    @property
    def latency(self) -> dict[tuple[str, str], list[float]]:
        return {(route, backend): list(cell.latency) for route, by_backend in self.cells.items()
                for backend, cell in by_backend.items() if cell.by_status}

    @property
    def by_backend(self) -> dict[str, dict[str, int]]:
        """route -> backend -> requests finished (routes with any finished request, even unrouted)."""
        return {route: {backend: sum(cell.by_status.values()) for backend, cell in by_backend.items()
                        if backend and cell.by_status}
                for route, by_backend in self.cells.items() if any(c.by_status for c in by_backend.values())}

    @property
    def choices(self) -> dict[tuple[str, str, str], int]:
        return {(route, backend, reason): n for route, by_backend in self.cells.items()
                for backend, cell in by_backend.items() for reason, n in cell.choices.items()}


def _pairs_with(live: Scored, shadow: Scored, key: tuple[str, str]) -> bool:
    """The shadow's score is of the same request as the live one, and the two are the rollout's pair."""
    return (shadow.shadow and live.route == shadow.route and live.predicted_at == shadow.predicted_at
            and (live.backend, shadow.backend) == key and live.correct is not None and shadow.correct is not None)


@mypyc_attr(allow_interpreted_subclasses=True)  # router.cluster's SharedLedger extends it
class Ledger:
    """Local state for one router process (the embedded default: one process, files in state_dir)."""

    def __init__(self, splits: Splits) -> None:
        self.splits = splits
        self.stats = RequestStats()
        self.windows: dict[str, WindowCounters] = {}
        self.shadow: dict[str, ShadowStats] = {}
        self.fallbacks: defaultdict[str, int] = defaultdict(int)
        self.llm = LlmState()  # token timings, fallbacks, judge verdicts, cooling backends
        # Routes whose mirroring the rollout loop stopped (candidate rolled back or promoted), and why:
        # `Mirror.begin` reads it once per request, a dict lookup.
        self.mirror_stopped: dict[str, str] = {}
        self._compare: dict[str, object] = {}  # route -> the compare spec its shadow stats were counted with
        self.previous_shadow: dict[str, tuple[float, ShadowStats]] = {}  # route -> (ended at, stats)
        self.series = TimeSeries()  # the last 15 minutes per route and backend, for the status page

    # -- outcome records from the data plane (hot path: O(1), no I/O)
    def chosen(self, route: str, choice: Choice) -> None:
        choices = self.stats.cell(route, choice.backend).choices
        reason = choice.reason
        choices[reason] = choices.get(reason, 0) + 1
        if choice.key_missing:
            missing = self.stats.sticky_key_missing
            missing[route] = missing.get(route, 0) + 1

    def upstream_error(self, backend: str, kind: str) -> None:
        errors = self.stats.upstream_errors
        errors[(backend, kind)] = errors.get((backend, kind), 0) + 1

    def fallback(self, route: str) -> None:
        self.fallbacks[route] += 1
        window = self.windows.get(route)
        if window is not None:
            window.fallback()

    def live(self, o: LiveOutcome) -> None:
        self.stats.finished(o.route, o.backend, o.status, o.seconds)
        self.series.record(o.route, o.backend, o.status, o.seconds)
        window = self.windows.get(o.route)
        if window is not None and not o.fell_back:
            window.live(o.backend, o.status, o.seconds)

    def llm_live(self, route: str, backend: str, outcome: LlmOutcome, *, sample: bool) -> None:
        """A live LLM answer's token figures; `sample`: it counts in the rollout window (not rerouted)."""
        self.llm.record(route, backend, outcome)
        window = self.windows.get(route)
        if sample and window is not None and not window.shadowed and backend in window.key:
            window.llm.record(backend == window.key[1], outcome)

    def llm_pair(self, route: str, shadow_backend: str, live: LlmOutcome, shadow: LlmOutcome) -> None:
        """A mirrored LLM pair's token figures: paired stats, and the shadowed window's evidence."""
        self.llm.record_pair(route, live, shadow)
        window = self._window_for(route, shadow_backend)
        if window is not None and window.shadowed:
            window.llm.record(False, live)
            window.llm.record(True, shadow)

    def judged(self, route: str, shadow_backend: str, result: str) -> None:
        """A judge's verdict on a pair (win, tie, loss for the candidate; or why none came)."""
        self.llm.judge[(route, result)] += 1
        window = self._window_for(route, shadow_backend)
        if window is not None:
            window.llm.verdict(result)

    def mirror_skipped(self, route: str, reason: int) -> None:
        """A live request was not mirrored: `reason` indexes shadowstats.DROP_REASONS."""
        stats = self.shadow.get(route)
        if stats is not None:
            stats.drops[reason] += 1

    def mirrored(self, route: str) -> None:
        stats = self.shadow.get(route)
        if stats is not None:
            stats.mirrored += 1

    def not_mirrored(self, route: str, reason: str) -> None:
        """A request the shadow never saw by design (not an inference call: shadow.paths)."""
        stats = self.shadow.get(route)
        if stats is not None:
            stats.not_mirrored[reason] += 1

    def compare_skipped(self, route: str, reason: str) -> None:
        stats = self.shadow.get(route)
        if stats is not None:
            stats.skipped[reason] += 1

    def pair(self, o: PairOutcome) -> None:
        stats = self.shadow.get(o.route)
        if stats is None:
            return
        incomplete = o.live_error == "incomplete"
        if not o.live_ok:
            stats.live_errors += not incomplete
            stats.skipped["live_failed"] += 1
        if not o.shadow_ok:
            stats.shadow_errors += 1
            stats.shadow_error_kinds[o.shadow_error or f"status_{o.shadow_status // 100}xx"] += 1
        window = self._window_for(o.route, o.shadow_backend)
        if window is not None and not incomplete:
            window.pair(o.live_status, o.live_error, o.live_s, o.shadow_status, o.shadow_error, o.shadow_s)
        if not (o.live_ok and o.shadow_ok):
            return
        stats.live_latency.observe(o.live_s)
        stats.shadow_latency.observe(o.shadow_s)
        stats.paired_diff.observe(o.shadow_s - o.live_s)
        if o.truncated:
            stats.skipped["response_too_large"] += 1

    def compared(self, o: ComparedOutcome) -> bool:
        """Count a comparison; True when it failed in a way worth a log line (the first of each
        reason, then the 10th, 100th, ...)."""
        stats = self.shadow.get(o.route)
        if stats is None:
            return False
        stats.last_compared_at = time.time()
        main = o.main
        if main.error is not None:
            if main.error_reason == DECODED_TOO_LARGE:
                stats.skipped[DECODED_TOO_LARGE] += 1  # a decompression bomb, or just too big
                return False
            return stats.extraction_error(main.error_reason or "unexpected_shape")
        stats.compared += 1
        stats.agreements += main.agree
        if main.instances is not None:
            stats.count_instances(main.instances)
        fields = dict(main.fields)
        stats.field_counts(stats.fields, fields)
        stats.mismatch_set(fields)
        if main.label_agree is not None:
            stats.label_n += 1
            stats.label_agree += main.label_agree
        if main.text_similarity is not None:
            stats.text_n += 1
            stats.text_similarity_sum += main.text_similarity
        if o.repeat is not None and o.repeat.error is None:
            stats.noise_samples += 1
            stats.field_counts(stats.noise_fields, dict(o.repeat.fields))
        window = self._window_for(o.route, o.shadow_backend)
        if window is not None and o.by_labels:
            if main.label_agree is not None:  # no label in the response: no evidence either way
                window.compared(main.label_agree)
        elif window is not None:
            # Agreement for the rollout gate leaves out fields already known to be noise.
            noise = stats.noise_set()
            window.compared(all(ok or name in noise for name, ok in fields.items()))
        if o.diff is not None:
            stats.recent.append(o.diff)
        return False

    def scored(self, result: FeedbackResult) -> None:
        """Feedback for predictions made during a route's current step counts for the accuracy gate."""
        scored = result.scored
        for i, s in enumerate(scored):
            window = self.windows.get(s.route)
            if window is None or s.correct is None or s.predicted_at < window.started_at:
                continue
            after = scored[i + 1] if i + 1 < len(scored) else None
            if s.shadow and i and _pairs_with(scored[i - 1], s, window.key):
                continue  # counted with its live prediction
            if after is not None and after.shadow and _pairs_with(s, after, window.key):
                window.scored_pair(s.correct, bool(after.correct))  # both against the same truth
            else:
                window.scored(s.backend, s.correct)

    def _window_for(self, route: str, shadow_backend: str) -> WindowCounters | None:
        """The window a mirrored request counts in: only when the shadow is the rollout's candidate."""
        window = self.windows.get(route)
        return window if window is not None and window.key[1] == shadow_backend else None

    # -- the hot path's one read
    def percent(self, route: RouteConfig) -> float:
        return self.splits.percent(route)

    # -- the rollout loop's reads and writes
    def evidence(self, route: str) -> StepEvidence | None:
        window = self.windows.get(route)
        return window.evidence() if window is not None else None

    def llm_evidence(self, route: str) -> LlmEvidence | None:
        window = self.windows.get(route)
        return window.llm.evidence() if window is not None else None

    def llm_output(self, route: str) -> dict[str, float | None]:
        """Mean output tokens per side in the step window, and their ratio (decision-log evidence)."""
        window = self.windows.get(route)
        return window.llm.output_summary() if window is not None else {}

    def open_window(self, route: str, window: WindowCounters) -> None:
        """Start counting a new step window (or put back a restored one)."""
        self.windows[route] = window

    def window_json(self, route: str, key: tuple[str, str], shadowed: bool) -> dict[str, Any]:
        """The window's counters as the state file keeps them (an empty window if none is open)."""
        window = self.windows.get(route) or WindowCounters(key, shadowed, 0.0)
        return window.to_json()

    def close_windows(self, keep: Iterable[str]) -> None:
        keep = set(keep)
        for name in [n for n in self.windows if n not in keep]:
            del self.windows[name]

    def set_split(self, route: RouteConfig, percent: float) -> None:
        """An operator's candidate percentage; persisted (OSError when it cannot be)."""
        self.splits.set(route, percent)

    def drive(self, route: str, percent: float) -> None:
        self.splits.driven[route] = percent

    def set_driven(self, percents: Mapping[str, float]) -> None:
        self.splits.driven = dict(percents)

    # -- reload: carry what is still valid, start afresh what the YAML changed
    def reconcile(self, config: Config) -> list[str]:
        """Keep shadow stats of routes whose primary, shadow backend and compare rules are unchanged;
        a route whose stats start afresh keeps the old ones as its `previous` report for a while.
        Drop runtime splits of routes the YAML changed. Returns notes for the reload answer."""
        shadow: dict[str, ShadowStats] = {}
        now = time.time()
        for route in config.routes:
            if route.shadow is not None:
                key, spec = (route.primary, route.shadow.backend), route.shadow.compare
                prev = self.shadow.get(route.name)
                if prev is not None and prev.key == key and self._compare.get(route.name) == spec:
                    shadow[route.name] = prev
                    continue
                if prev is not None:
                    self.previous_shadow[route.name] = (now, prev)
                shadow[route.name] = ShadowStats(*key)
                self._compare[route.name] = spec
        self.shadow = shadow
        self.series.retain(route.name for route in config.routes)
        stale = self.splits.reconcile(config)
        return [f"runtime splits reset to the YAML for changed routes: {', '.join(stale)}"] if stale else []

    def set_mirror_stops(self, stopped: Mapping[str, str]) -> None:
        """The routes whose candidate no longer gets mirrored traffic, each with why (set by the rollout loop)."""
        self.mirror_stopped = dict(stopped)

    def previous_shadow_stats(self, route: str) -> tuple[float, ShadowStats] | None:
        """The report a change of compare rules (or backends) replaced, for PREVIOUS_KEEP_S after it ended."""
        prev = self.previous_shadow.get(route)
        if prev is not None and time.time() - prev[0] > PREVIOUS_KEEP_S:
            del self.previous_shadow[route]
            return None
        return prev

    # -- reads for the admin API, status page and metrics
    def snapshot(self, route: RouteConfig) -> RouteSnapshot:
        name = route.name
        return RouteSnapshot(name, self.splits.percent(route), name in self.splits.overrides,
                             dict(self.stats.by_backend.get(name, {})), self.stats.sticky_key_missing.get(name, 0),
                             self.fallbacks.get(name, 0), self.evidence(name))

    def shadow_stats(self, route: str) -> ShadowStats | None:
        return self.shadow.get(route)

    def series_snapshot(self, route: str) -> dict[str, Any]:
        """The route's requests, errors and latency per backend over the last 15 minutes (JSON-ready)."""
        return self.series.snapshot(route)
