"""The one latency bucket scheme: `layout_index` must be exactly `bisect_left` over every layout,
at the bounds themselves and beside them, since each request's counters rely on it."""

from __future__ import annotations

import bisect
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from router.analysis.histogram import ALERT_BOUNDS, ALERT_STEP, EXPORT_BOUNDS, EXPORT_STEP, FINE, coarse, layout_index

STEPS = (1, 2, 4, 8, 16)
EDGES = [0.0, -1.0, 1e-12, FINE[0] / 2, 1e9, math.inf, math.nan,
         *FINE, *(math.nextafter(b, 0.0) for b in FINE), *(math.nextafter(b, math.inf) for b in FINE)]


@pytest.mark.parametrize("step", STEPS)
def test_at_and_beside_every_bound(step: int) -> None:
    bounds = FINE[::step]
    wrong = [x for x in EDGES if layout_index(step, x) != bisect.bisect_left(bounds, x)]
    assert not wrong, wrong[:5]


@settings(max_examples=2_000, deadline=None)
@given(st.sampled_from(STEPS), st.floats(min_value=0.0, max_value=1e4, allow_nan=False))
def test_anywhere(step: int, x: float) -> None:
    assert layout_index(step, x) == bisect.bisect_left(FINE[::step], x)


def test_the_named_layouts_are_the_steps_their_callers_pass() -> None:
    assert ALERT_BOUNDS == coarse(4) == FINE[::ALERT_STEP]
    assert EXPORT_BOUNDS == coarse(1) == FINE[::EXPORT_STEP]
